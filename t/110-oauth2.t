#!/usr/bin/perl

# type=oauth2_client_credentials against a fake RFC 6749 token endpoint
# that knows its clients: HTTP Basic auth with the form-encoded ID and
# secret (auth=basic, the default) or both in the form (auth=body), the
# grant type, scope and audience.  Injection, single flight, refresh ahead,
# 401 invalidation, failures with error/error_description, no secret in any
# log, nginx -t messages.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeProviders;
use CloudAuth::KindTests;

my $t = CloudAuth::Test->new;
my $d = $t->dir;

# a secret with characters Basic auth must carry form-encoded
my $s1 = 'b4s1c:s3cret+/=&%~' . ('x' x 20);
my $s2 = 'b0dy-s3cret_' . ('y' x 24);
my $aud = 'https://api.example.com/';

$t->write_file('basic.secret', "$s1\n", 0600);
$t->write_file('body.secret', "$s2\r\n", 0600);
$t->write_file('wrong.secret', "nope\n", 0600);
$t->add_secrets($s1, $s2);

CloudAuth::FakeProviders::start($t, 'oauth2', clients => {
    'basic-app' => { secret => $s1, auth => 'basic', scope => 'read write',
                     audience => $aud },
    'body-app' => { secret => $s2, auth => 'body', scope => 'api.read' },
    'bare-app' => { secret => $s2 },
});

my $url = 'token_url=https://127.0.0.1:%%PORT_OAUTH2%%/oauth2/token';
my $basic = "type=oauth2_client_credentials $url client_id=basic-app "
            . "client_secret_file=$d/basic.secret \"scope=read write\" "
            . "audience=$aud";

my %creds = (
    o => $basic, oburst => $basic, oshort => $basic, o401 => $basic,
    o503 => $basic, oleak => $basic,
    obody => "type=oauth2_client_credentials $url client_id=body-app "
             . "client_secret_file=$d/body.secret scope=api.read auth=body",
    obare => "type=oauth2_client_credentials $url client_id=bare-app "
             . "client_secret_file=$d/body.secret",
    obad => "type=oauth2_client_credentials $url client_id=basic-app "
            . "client_secret_file=$d/wrong.secret \"scope=read write\" "
            . "audience=$aud",
);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;
EOF

for my $c (sort keys %creds) {
    $conf = "    cloudauth_credential $c $creds{$c};\n" . $conf . <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF
}

$t->run("$conf    }\n");

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }
sub count { CloudAuth::FakeProviders::count($t, 'oauth2') }
sub tokens { CloudAuth::FakeProviders::tokens($t, 'oauth2') }
sub set { CloudAuth::FakeProviders::set($t, 'oauth2', @_) }
sub last_request { (CloudAuth::FakeProviders::requests($t, 'oauth2'))[-1] }

# auth=basic (default), scope, audience

my $r = $t->http_get('/o/x');
is($r->{status}, 200, 'basic: proxied');
my $token = (tokens())[-1];
like($token, qr/^oat-fake-/, 'basic: a token was issued');
is(auth($r), "Bearer $token", 'basic: Authorization: Bearer token');

my $req = last_request();
ok($req->{verified}, 'basic: request verified') or diag $req->{reason};
is($req->{auth}, 'basic', 'basic: client authenticated with Basic auth '
   . '(form-encoded ID and secret)');
is_deeply($req->{form}, { grant_type => 'client_credentials',
                          scope => 'read write', audience => $aud },
          'basic: grant_type, scope and audience; no client in the form');
is($req->{method}, 'POST', 'basic: POST');

$r = $t->http_get('/o/y');
is(auth($r), "Bearer $token", 'basic: cached');
is(count(), 1, 'basic: one token request');

# auth=body

$r = $t->http_get('/obody/x');
is($r->{status}, 200, 'body: proxied');
$req = last_request();
ok($req->{verified}, 'body: request verified') or diag $req->{reason};
is($req->{auth}, 'body', 'body: client_id and client_secret in the form');
is_deeply($req->{form}, { grant_type => 'client_credentials',
                          scope => 'api.read', client_id => 'body-app' },
          'body: the form (secret checked by the fake, not logged)');
is(auth($r), 'Bearer ' . (tokens())[-1], 'body: its token');

# neither scope nor audience

$r = $t->http_get('/obare/x');
is($r->{status}, 200, 'no scope: proxied');
is_deeply(last_request()->{form}, { grant_type => 'client_credentials' },
          'no scope: grant_type only');

# the engine

my %k = (count => \&count, tokens => \&tokens, set => \&set);

CloudAuth::KindTests::single_flight($t, %k, path => '/oburst/',
                                    name => 'oauth2');
CloudAuth::KindTests::refresh_ahead($t, %k, path => '/oshort/',
                                    name => 'oauth2');
CloudAuth::KindTests::invalidate($t, %k, path => '/o401/', name => 'oauth2');

CloudAuth::KindTests::fails($t, %k, path => '/obad/', cred => 'obad',
    name => 'oauth2 wrong secret',
    log => qr/HTTP 401: invalid_client: Client authentication failed/);
CloudAuth::KindTests::fails($t, %k, path => '/o503/', cred => 'o503',
    name => 'oauth2 503',
    behaviour => { status => 503, error => 'temporarily_unavailable',
                   error_description => 'The server is down for upgrade' },
    log => qr/HTTP 503: temporarily_unavailable: The server is down/);

is(join("\n", grep { !/Client authentication failed/ }
              CloudAuth::FakeProviders::unverified($t, 'oauth2')), '',
   'every other token request passed verification');

# no secret in any log

my $mark = length $t->error_log;
my @pages;

for my $p ('/oleak/x?noecho', '/oleak/y?noecho', '/obad/x?noecho') {
    push @pages, $t->http_get($p)->{raw};
}

CloudAuth::KindTests::no_leaks($t, $mark, @pages);
unlike($t->error_log, qr/\Q$s1\E|\Q$s2\E|b4s1c/,
       'no client secret anywhere in the error log');
$t->check_log_ok;

# bad configurations

sub bad {
    my ($name, $cred, @re) = @_;
    my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential oc type=oauth2_client_credentials $cred;
EOF
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "oc"/,
         "$name: names the directive and the credential");
    like($out, $_, "$name: says $_") for @re;
}

my $sec = "client_secret_file=$d/basic.secret";

bad('no token_url', "client_id=a $sec", qr/token_url=/);
bad('no client_id', "$url $sec", qr/client_id=/);
bad('no secret', "$url client_id=a", qr/"client_secret_file=" is required/);
bad('bad auth=', "$url client_id=a $sec auth=digest",
    qr/auth="digest".*basic.*body/);
bad('empty scope', "$url client_id=a $sec scope=", qr/empty "scope="/);
bad('plain http', "client_id=a $sec token_url=http://idp.example.com/token",
    qr/plain http.*https/);
bad('not a URL', "client_id=a $sec token_url=idp.example.com/token",
    qr/not an https:\/\/ URL/);

my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential oc type=oauth2_client_credentials $url client_id=a
        client_secret=$s2;
EOF
is($rc, 0, 'inline client_secret: allowed') or diag $out;
like($out, qr/\[warn\].*inline "client_secret="/, 'inline: a warning');
unlike($out, qr/\Q$s2\E/, 'inline: the secret is not shown');

done_testing;
