#!/usr/bin/perl

# type=google_id_token: a jwt-bearer assertion with a target_audience claim
# (verified by the fake Google token endpoint with the key's public half),
# answered {"id_token": JWT} without expires_in: the token is cached until
# its own exp.  Injection, single flight, refresh ahead, 401 invalidation,
# failures with Google's words, no secret in any log, nginx -t messages.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use MIME::Base64 qw(decode_base64url);
use CloudAuth::Test;
use CloudAuth::KindTests;

my $t = CloudAuth::Test->new;
my $aud = 'https://hello-abc123-uc.a.run.app';

my $cred = "type=google_id_token key_file=%%KEY_FILE%% audience=$aud";
my @creds = qw(id idburst idshort id401 idbad idnotjwt idleak);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;
EOF

for my $c (@creds) {
    $conf = "    cloudauth_credential $c $cred;\n" . $conf . <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF
}

$t->run("$conf    }\n");

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

my $r = $t->http_get('/id/x');
is($r->{status}, 200, 'proxied');
my ($token) = $t->issued_tokens;
like($token, qr/^eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+$/, 'an ID token (a JWT)');
is(auth($r), "Bearer $token", 'Authorization: Bearer <id_token>');

my ($req) = $t->token_requests;
my $key = $t->key;
ok($req->{verified}, 'assertion verified (RS256, claims)')
    or diag $req->{reason};
is($req->{claims}{target_audience}, $aud, 'target_audience is audience=');
is($req->{claims}{iss}, $key->{client_email}, 'iss is client_email');
is($req->{claims}{aud}, $t->token_url, 'aud is the token URL');
ok(!exists $req->{claims}{scope}, 'no scope');
ok(!exists $req->{claims}{sub}, 'no sub');
is($req->{header}{kid}, $key->{private_key_id}, 'kid');

my $claims = decode_json(decode_base64url((split /\./, $token)[1]));
is($claims->{aud}, $aud, 'the ID token is for the audience');

$r = $t->http_get('/id/y');
is(auth($r), "Bearer $token", 'cached');
is($t->token_count, 1, 'one token request');

my %k = (count => sub { $t->token_count },
         tokens => sub { $t->issued_tokens },
         set => sub { $t->token_set(@_) });

# the fake answers no expires_in: the refresh only happens on time if the
# lifetime is read from the ID token's exp
CloudAuth::KindTests::single_flight($t, %k, path => '/idburst/',
                                    name => 'id_token');
CloudAuth::KindTests::refresh_ahead($t, %k, path => '/idshort/',
                                    name => 'id_token (lifetime from exp)');
CloudAuth::KindTests::invalidate($t, %k, path => '/id401/',
                                 name => 'id_token');

CloudAuth::KindTests::fails($t, %k, path => '/idbad/', cred => 'idbad',
    name => 'id_token invalid_grant',
    behaviour => { status => 400, error => 'invalid_grant',
                   error_description => 'Invalid JWT Signature.' },
    log => qr/HTTP 400: invalid_grant: Invalid JWT Signature\./);
CloudAuth::KindTests::fails($t, %k, path => '/idnotjwt/', cred => 'idnotjwt',
    name => 'id_token not a JWT',
    behaviour => { body => '{"id_token": "not-a-jwt"}' },
    log => qr/id_token is not a JWT with "exp"/);

$t->token_verified_ok;

my $mark = length $t->error_log;
my @pages = map { $t->http_get($_)->{raw} } '/idleak/x?noecho',
                                            '/idleak/y?noecho';
CloudAuth::KindTests::no_leaks($t, $mark, @pages);
$t->check_log_ok;

# bad configurations

sub bad {
    my ($name, $cred, @re) = @_;
    my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential gi type=google_id_token $cred;
EOF
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "gi"/,
         "$name: names the directive and the credential");
    like($out, $_, "$name: says $_") for @re;
}

bad('no audience', 'key_file=%%KEY_FILE%%', qr/"audience=" is required/);
bad('audience with a space', 'key_file=%%KEY_FILE%% "audience=a b"',
    qr/audience= has spaces/);
bad('no key_file', "audience=$aud", qr/"key_file=" is required/);
bad('missing key_file', "key_file=%%TESTDIR%%/none.json audience=$aud",
    qr/none\.json.*no such file/);
bad('scopes', "key_file=%%KEY_FILE%% audience=$aud scopes=x",
    qr/unknown parameter "scopes"/);
bad('subject', "key_file=%%KEY_FILE%% audience=$aud subject=a\@b.c",
    qr/takes no subject/);

done_testing;
