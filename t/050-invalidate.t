#!/usr/bin/perl

# Upstream 401: the token the request carried is dropped from the cache,
# so the next request fetches a new one (exactly one more token request).
# Only that token: a late 401 for an older token keeps the newer one, and
# many 401s for one token drop it once.

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

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
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

# a late 401 for an older token keeps the newer one

# carries $second; the upstream answers 401 in 1.5 s
my $late = $t->http_start('/api/401?delay=1.5');
$t->wait_for(sub { grep { $_->{uri} =~ /delay/ } $t->upstream_requests }, 2);

$r = $t->http_get('/api/401');                 # drops $second
is("$r->{status} " . auth($r), "401 Bearer $second",
   '401 for the current token');

my $third = current();
isnt($third, $second, 'token replaced');
is($t->token_count, 3, 'one token request');

$r = $t->http_end($late);
is("$r->{status} " . auth($r), "401 Bearer $second",
   'late 401 for the old token');
is(current(), $third, 'late 401 did not drop the newer token');
is($t->token_count, 3, 'no token request after the late 401');

# ten concurrent 401s for one token drop it once

my @r = $t->burst('/api/401?delay=0.5', 10);
is(scalar(grep { $_->{status} == 401 && auth($_) eq "Bearer $third" } @r), 10,
   'ten 401s with the same token');

my $fourth = current();
isnt($fourth, $third, 'token replaced after the 401s');
is(current(), $fourth, 'and cached');
is($t->token_count, 4, 'exactly one token request for ten 401s');

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
