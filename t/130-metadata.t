#!/usr/bin/perl

# type=google_metadata against a fake GCE metadata server on plain HTTP
# (loopback): GET with "Metadata-Flavor: Google", .../default/token with
# or without scopes= (JSON answer), .../default/identity?audience= (the
# bare JWT as text, cached until its exp).  Injection, single flight,
# refresh ahead, 401 invalidation, failures with the server's plain-text
# words, no secret in any log, nginx -t messages.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeProviders;
use CloudAuth::KindTests;

my $t = CloudAuth::Test->new;

CloudAuth::FakeProviders::start($t, 'metadata');

my $ep = 'endpoint=http://127.0.0.1:%%PORT_METADATA%%/';
my $scopes = 'scopes=https://www.googleapis.com/auth/cloud-platform,'
             . 'https://www.googleapis.com/auth/drive';
my $aud = 'https://hello-abc123-uc.a.run.app';

my %creds = (
    m => "$ep $scopes", mdefault => $ep, mburst => "$ep $scopes",
    mshort => "$ep $scopes", m401 => "$ep $scopes", m404 => "$ep $scopes",
    mleak => "$ep $scopes", msticky => "$ep $scopes",
    id => "$ep audience=$aud", idshort => "$ep audience=$aud",
    id401 => "$ep audience=$aud", idleak => "$ep audience=$aud",
);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;
EOF

for my $c (sort keys %creds) {
    $conf = "    cloudauth_credential $c type=google_metadata $creds{$c};\n"
            . $conf . <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF
}

$t->run("$conf    }\n");

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }
sub count { CloudAuth::FakeProviders::count($t, 'metadata') }
sub tokens { CloudAuth::FakeProviders::tokens($t, 'metadata') }
sub set { CloudAuth::FakeProviders::set($t, 'metadata', @_) }
sub last_request { (CloudAuth::FakeProviders::requests($t, 'metadata'))[-1] }

my $base = '/computeMetadata/v1/instance/service-accounts/default/';

# an access token, with scopes

my $r = $t->http_get('/m/x');
is($r->{status}, 200, 'token: proxied');
my $token = (tokens())[-1];
like($token, qr/^ya29\.meta-fake-/, 'token: issued by the metadata server');
is(auth($r), "Bearer $token", 'token: Authorization: Bearer token');

my $req = last_request();
ok($req->{verified}, 'token: request verified') or diag $req->{reason};
is($req->{method}, 'GET', 'token: GET');
is($req->{flavor}, 'Google', 'token: Metadata-Flavor: Google');
is($req->{path}, "${base}token", 'token: the default account\'s token');
is($req->{query}{scopes}, 'https://www.googleapis.com/auth/cloud-platform,'
   . 'https://www.googleapis.com/auth/drive', 'token: scopes= as given');

$r = $t->http_get('/m/y');
is(auth($r), "Bearer $token", 'token: cached');
is(count(), 1, 'token: one request');

# without scopes

$r = $t->http_get('/mdefault/x');
is($r->{status}, 200, 'no scopes: proxied');
is(last_request()->{uri}, "${base}token", 'no scopes: no query');

# an ID token

$r = $t->http_get('/id/x');
is($r->{status}, 200, 'identity: proxied');
$req = last_request();
ok($req->{verified}, 'identity: request verified') or diag $req->{reason};
is($req->{path}, "${base}identity", 'identity: the identity path');
is($req->{query}{audience}, $aud, 'identity: audience=');
is($req->{flavor}, 'Google', 'identity: Metadata-Flavor: Google');
like($req->{token}, qr/^eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+$/,
     'identity: a bare JWT answered as text');
is(auth($r), "Bearer $req->{token}", 'identity: injected');

# the engine

my %k = (count => \&count, tokens => \&tokens, set => \&set);

CloudAuth::KindTests::single_flight($t, %k, path => '/mburst/',
                                    name => 'metadata');
CloudAuth::KindTests::refresh_ahead($t, %k, path => '/mshort/',
                                    name => 'metadata token');
CloudAuth::KindTests::refresh_ahead($t, %k, path => '/idshort/',
                                    name => 'metadata identity (from exp)');
CloudAuth::KindTests::invalidate($t, %k, path => '/m401/',
                                 name => 'metadata token');
CloudAuth::KindTests::invalidate($t, %k, path => '/id401/',
                                 name => 'metadata identity');

CloudAuth::KindTests::fails($t, %k, path => '/m404/', cred => 'm404',
    name => 'metadata 404', behaviour => { status => 404,
        content_type => 'text/plain; charset=utf-8',
        reason => 'Not Found: no service account "default"' },
    log => qr/HTTP 404: Not Found: no service account "default"/);

is(join("\n", CloudAuth::FakeProviders::unverified($t, 'metadata')), '',
   'every request passed verification');

# the real server hands back the token held until shortly before its end:
# a refresh ahead that gets it again does not refresh again at once (before,
# each request after the halved refresh point asked again, ever sooner)

set(sticky => 1, expires_in => 14, renew_before => 1);
my $n = count();
my $end = time + 15;
my %seen;

while (time < $end) {
    my $r = $t->http_get('/msticky/x');
    $seen{ auth($r) }++ if $r->{status} == 200;
    select undef, undef, undef, 0.1;
}

my $asked = count() - $n;
note "sticky metadata token: $asked token requests in 15 s, "
     . scalar(keys %seen) . ' tokens used';

# the first fetch, one refresh ahead at half its life (the same token
# back), and the fetches as the held one ends (its seconds left are whole
# seconds, so it may come back once more): 3 or 4.  Before, every request
# past the halved refresh point asked again: 7 or more here
cmp_ok($asked, '<=', 5, 'a same-token refresh does not start another');
cmp_ok($asked, '>=', 2, 'the refresh ahead did ask');
ok(!grep({ $_ eq 'none' } keys %seen), 'every request had a token');
set();

my $mark = length $t->error_log;
my @pages = map { $t->http_get($_)->{raw} }
            '/mleak/x?noecho', '/idleak/x?noecho', '/idleak/y?noecho';
CloudAuth::KindTests::no_leaks($t, $mark, @pages);
$t->check_log_ok;

# configurations

sub nginx_t {
    my ($cred) = @_;
    return $t->nginx_t(<<"EOF");
    cloudauth_credential md type=google_metadata $cred;
EOF
}

for my $ok ('', 'endpoint=http://metadata.google.internal',
            'endpoint=http://169.254.169.254/', "audience=$aud", $scopes)
{
    my ($rc, $out) = nginx_t($ok);
    is($rc, 0, "good: \"$ok\"") or diag $out;
}

sub bad {
    my ($name, $cred, @re) = @_;
    my ($rc, $out) = nginx_t($cred);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "md"/,
         "$name: names the directive and the credential");
    like($out, $_, "$name: says $_") for @re;
}

bad('scopes and audience', "$scopes audience=$aud", qr/both given/);
bad('plain http elsewhere', 'endpoint=http://metadata.example.com',
    qr/endpoint.*plain http/);
bad('empty audience', 'audience=', qr/empty "audience="/);
bad('key_file', 'key_file=%%KEY_FILE%%', qr/unknown parameter "key_file"/);

done_testing;
