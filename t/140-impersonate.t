#!/usr/bin/perl

# type=google_impersonate against a fake IAM Credentials endpoint that
# checks the caller's bearer token (issued by the fake Google token endpoint
# to the source credential), the target in the path and the JSON body.
# Injection, single flight, refresh ahead, 401 invalidation, failures with
# Google's JSON error, no secret in any log, nginx -t messages.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeProviders;
use CloudAuth::KindTests;

my $t = CloudAuth::Test->new;

my $reader = 'reader@cloudauth-test.iam.gserviceaccount.com';
my $ro = 'https://www.googleapis.com/auth/devstorage.read_only';

CloudAuth::FakeProviders::start($t, 'iam', targets => { $reader => $ro });

my $cred = "type=google_impersonate source=google target=$reader "
           . "scopes=$ro endpoint=https://127.0.0.1:%%PORT_IAM%%/";

my %creds = (
    im => $cred, imburst => $cred, imshort => $cred, im401 => $cred,
    im503 => $cred, imleak => $cred,
    imdenied => $cred =~ s/reader\@/writer\@/r,
);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /google/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF

for my $c (sort keys %creds) {
    $conf .= <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF
}

$conf =~ s/^(    server \{)/join('', map {
    "    cloudauth_credential $_ $creds{$_};\n" } sort keys %creds) . $1/me;

$t->run("$conf    }\n");

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }
sub count { CloudAuth::FakeProviders::count($t, 'iam') }
sub tokens { CloudAuth::FakeProviders::tokens($t, 'iam') }
sub set { CloudAuth::FakeProviders::set($t, 'iam', @_) }
sub last_request { (CloudAuth::FakeProviders::requests($t, 'iam'))[-1] }

my $r = $t->http_get('/im/x');
is($r->{status}, 200, 'proxied');
my $token = (tokens())[-1];
like($token, qr/^ya29\.imp-fake-/, 'an impersonated token');
is(auth($r), "Bearer $token", 'Authorization: Bearer <impersonated token>');

my ($source) = $t->issued_tokens;
my $req = last_request();
ok($req->{verified}, 'request verified') or diag $req->{reason};
is($req->{source_token}, $source, 'authorised by the source\'s token');
is($req->{target}, $reader, 'the target in the path');
is_deeply($req->{body}, { scope => [$ro], lifetime => '3600s' },
          'body: scope and lifetime');
is($t->token_count, 1, 'one token request for the source');

$r = $t->http_get('/google/x');
is(auth($r), "Bearer $source", 'the source\'s token is cached for it too');
is($t->token_count, 1, 'no second source token request');

$r = $t->http_get('/im/y');
is(auth($r), "Bearer $token", 'cached');
is(count(), 1, 'one impersonation request');

my %k = (count => \&count, tokens => \&tokens, set => \&set);

CloudAuth::KindTests::single_flight($t, %k, path => '/imburst/',
                                    name => 'impersonate');

# the refresh is a second request of the same credential: its body too
CloudAuth::KindTests::refresh_ahead($t, %k, path => '/imshort/',
                                    name => 'impersonate');
CloudAuth::KindTests::invalidate($t, %k, path => '/im401/',
                                 name => 'impersonate');

CloudAuth::KindTests::fails($t, %k, path => '/imdenied/', cred => 'imdenied',
    name => 'impersonate denied',
    log => qr/HTTP 403: PERMISSION_DENIED: Permission 'iam\.serviceAccounts/);
CloudAuth::KindTests::fails($t, %k, path => '/im503/', cred => 'im503',
    name => 'impersonate 503',
    behaviour => { status => 503, error => 'UNAVAILABLE',
                   error_description => 'The service is currently '
                                        . 'unavailable.' },
    log => qr/HTTP 503: UNAVAILABLE: The service is currently unavailable/);

is(join("\n", grep { !/PERMISSION_DENIED/ }
              CloudAuth::FakeProviders::unverified($t, 'iam')), '',
   'every other request passed verification');
is($t->token_count, 1, 'the source token was reused throughout');
$t->token_verified_ok;

my $mark = length $t->error_log;
my @pages = map { $t->http_get($_)->{raw} } '/imleak/x?noecho',
                                            '/imleak/y?noecho';
CloudAuth::KindTests::no_leaks($t, $mark, @pages);
$t->check_log_ok;

# bad configurations

sub bad {
    my ($name, $cred, @re) = @_;
    my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential ci type=google_impersonate $cred;
EOF
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "ci"/,
         "$name: names the directive and the credential");
    like($out, $_, "$name: says $_") for @re;
}

bad('no source', "target=$reader scopes=$ro", qr/source=/);
bad('unknown source', "source=nosuch target=$reader scopes=$ro",
    qr/source="nosuch" is not a cloudauth_credential defined above/);
bad('no scopes', "source=google target=$reader", qr/scopes=/);
bad('target with a slash', "source=google target=a/b scopes=$ro",
    qr/target="a\/b" is not a service account e-mail/);
bad('plain http endpoint', "source=google target=$reader scopes=$ro "
    . 'endpoint=http://iam.example.com', qr/endpoint.*plain http/);

done_testing;
