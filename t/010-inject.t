#!/usr/bin/perl

# Token injection: the module gets a token with a correctly signed
# assertion, puts "Authorization: Bearer <token>" into proxied requests
# instead of whatever the client sent, caches it, exposes $cloudauth_token,
# and handles subjects (sub claim, one cache entry each, subjects= regex).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential delegated type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%
        subject=default@example.com "subjects=[a-z.]+@example\.com";

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /var/ {
            cloudauth google;
            proxy_set_header X-Token $cloudauth_token;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /sub/ {
            cloudauth delegated;
            cloudauth_subject $http_x_user_email;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /plain/ {
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF

my $key = $t->key;

# injection

my $r = $t->http_get('/api/x');
is($r->{status}, 200, 'proxied');
like($r->{headers}{'x-echo-authorization'}, qr/^Bearer ya29\.fake-\S+$/,
     'Authorization: Bearer token');
is($r->{headers}{'x-echo-authorization-count'}, 1, 'one Authorization');

my ($token) = $t->issued_tokens;
is($r->{headers}{'x-echo-authorization'}, "Bearer $token", 'the issued token');
is($t->token_count, 1, 'one token request');

# the grant, as the fake endpoint saw it (it verified it too)

my ($req) = $t->token_requests;
ok($req->{verified}, 'assertion verified') or diag $req->{reason};
is($req->{header}{alg}, 'RS256', 'alg RS256');
is($req->{header}{typ}, 'JWT', 'typ JWT');
is($req->{header}{kid}, $key->{private_key_id}, 'kid is private_key_id');
is($req->{claims}{iss}, $key->{client_email}, 'iss is client_email');
is($req->{claims}{scope}, join(' ', @CloudAuth::Test::SCOPES),
   'scope: scopes joined by a space');
is($req->{claims}{aud}, $t->token_url, 'aud is the token URL');
cmp_ok(abs($req->{claims}{iat} - $req->{time}), '<=', 5, 'iat is now');
is($req->{claims}{exp} - $req->{claims}{iat}, 3600, 'exp is iat + 3600');
ok(!exists $req->{claims}{sub}, 'no sub without a subject');
like($req->{content_type}, qr{^application/x-www-form-urlencoded}i,
     'form content type');

# cached

$r = $t->http_get('/api/y');
is($r->{headers}{'x-echo-authorization'}, "Bearer $token", 'cached token');
is($t->token_count, 1, 'no second token request');

# the client's Authorization is replaced, never forwarded

$r = $t->http_get('/api/x', Authorization => 'Basic dXNlcjpwYXNz');
is($r->{headers}{'x-echo-authorization'}, "Bearer $token",
   'client Authorization replaced');
is($r->{headers}{'x-echo-authorization-count'}, 1, 'only one Authorization');
unlike($r->{body}, qr/dXNlcjpwYXNz/, 'client credentials not forwarded');

$r = $t->http_get('/api/x', authorization => 'Bearer client-token');
is($r->{headers}{'x-echo-authorization'}, "Bearer $token",
   'lowercase client authorization replaced');

$r = $t->http_get('/api/x',
                  Authorization => ['Bearer client-1', 'Bearer client-2']);
ok($r->{status} == 400
   || $r->{status} == 200
      && $r->{headers}{'x-echo-authorization'} eq "Bearer $token"
      && $r->{headers}{'x-echo-authorization-count'} == 1,
   'two client Authorization headers: refused or both replaced');
unlike($r->{body}, qr/client-[12]/, 'neither client header forwarded');

# $cloudauth_token

$r = $t->http_get('/var/x');
like($r->{body}, qr/^header: X-Token: \Q$token\E$/m, '$cloudauth_token');

# without cloudauth nothing is added

$r = $t->http_get('/plain/x');
is($r->{headers}{'x-echo-authorization'}, 'none', 'no cloudauth: no token');
$r = $t->http_get('/plain/x', Authorization => 'Bearer mine');
is($r->{headers}{'x-echo-authorization'}, 'Bearer mine',
   'no cloudauth: client header left alone');

# subjects: the sub claim and an entry each

my $n = $t->token_count;

$r = $t->http_get('/sub/x', 'X-User-Email' => 'alice@example.com');
is($r->{status}, 200, 'subject alice');
is($t->token_count, $n + 1, 'alice: one token request');
my $alice = ($t->issued_tokens)[-1];
is($r->{headers}{'x-echo-authorization'}, "Bearer $alice", 'alice token');
is(($t->token_requests)[-1]{claims}{sub}, 'alice@example.com', 'sub alice');
isnt($alice, $token, 'alice has her own token');

$r = $t->http_get('/sub/y', 'X-User-Email' => 'alice@example.com');
is($r->{headers}{'x-echo-authorization'}, "Bearer $alice", 'alice cached');
is($t->token_count, $n + 1, 'alice: no second token request');

$r = $t->http_get('/sub/x', 'X-User-Email' => 'bob@example.com');
is($r->{status}, 200, 'subject bob');
is($t->token_count, $n + 2, 'bob: one token request');
is(($t->token_requests)[-1]{claims}{sub}, 'bob@example.com', 'sub bob');
my $bob = ($t->issued_tokens)[-1];
is($r->{headers}{'x-echo-authorization'}, "Bearer $bob", 'bob token');
isnt($bob, $alice, 'bob and alice differ');

$r = $t->http_get('/sub/x');
is($r->{status}, 200, 'no subject header');
is(($t->token_requests)[-1]{claims}{sub}, 'default@example.com',
   'empty subject: the credential\'s subject=');
is($t->token_count, $n + 3, 'default subject: one token request');

$r = $t->http_get('/api/x');
is($r->{headers}{'x-echo-authorization'}, "Bearer $token",
   'credential without subject keeps its token');

# subjects= refuses others, without a token request

$n = $t->token_count;

for my $s ('mallory@evil.com', 'alice@example.com.evil.org',
           'x alice@example.com', 'ALICE@EXAMPLE.COM')
{
    $r = $t->http_get('/sub/x', 'X-User-Email' => $s);
    is($r->{status}, 403, "subject \"$s\" refused");
}

is($t->token_count, $n, 'no token request for refused subjects');
is(scalar(grep { $_->{uri} =~ m{^/sub/} } $t->upstream_requests), 4,
   'refused subjects not proxied');

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
