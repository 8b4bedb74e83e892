#!/usr/bin/perl

# Upstream 401: the token the request carried is dropped from the cache,
# so the next request fetches a new one (exactly one more token request).
# At most once per entry in 30 s: an upstream that answers 401 to every
# request (a wrong IAM role, a 401 a client can provoke) does not turn each
# request into a signature and a token request.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP qw(decode_json);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location = /status {
            cloudauth_status;
        }
    }
EOF

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

# the token the upstream is using now, via a plain request
sub current {
    my $r = $t->http_get('/api/x');
    is($r->{status}, 200, 'request ok');
    return auth($r) =~ s/^Bearer //r;
}

my $first = current();
is($t->token_count, 1, 'first token');

# the upstream revokes it: 401 passed on, token dropped

$t->revoke($first);
my $r = $t->http_get('/api/x');
is($r->{status}, 401, 'revoked token: 401 passed to the client');
is(auth($r), "Bearer $first", 'it carried the revoked token');

my $second = current();
isnt($second, $first, 'new token after the 401');
is($t->token_count, 2, 'exactly one more token request');
is(current(), $second, 'new token cached');
is($t->token_count, 2, 'no further token request');

# an upstream that answers 401 to everything: the token was dropped less
# than 30 s ago, so it is kept; no storm of token requests

my @r = $t->burst('/api/401', 10);
is(scalar(grep { $_->{status} == 401 && auth($_) eq "Bearer $second" } @r),
   10, 'ten 401s with the current token');
$r = $t->http_get('/api/401');
is("$r->{status} " . auth($r), "401 Bearer $second", 'and one more');
is(current(), $second, 'the token is kept: dropped < 30 s ago');
is($t->token_count, 2, 'no token request for eleven 401s');

# a 401 for a token that is no longer cached changes nothing either

$t->revoke($second);
$r = $t->http_get('/api/x');
is("$r->{status} " . auth($r), "401 Bearer $second", 'revoked again: 401');
is($t->token_count, 2, 'still no token request within 30 s');

my $st = decode_json($t->http_get('/status')->{body});
my $g = $st->{credentials}{google};
is($g->{invalidations}, 1, 'status: one invalidation');
is($g->{unauthorized_kept}, 12, 'status: twelve 401s not acted on');
is($g->{entries}[0]{unauthorized_kept}, 12, 'per entry too');
like($t->http_get('/status?format=prometheus')->{body},
     qr/^cloudauth_unauthorized_kept_total\{credential="google"\} 12$/m,
     'and in Prometheus');

like($t->error_log, qr/upstream answered 401, cached token dropped/,
     'the one drop is logged');
is(scalar(() = $t->error_log =~ /cached token dropped/g), 1,
   'once');

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
