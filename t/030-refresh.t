#!/usr/bin/perl

# Refresh ahead: a token living 8 s is refreshed in its last
# min(300 s, 8 s / 2) = 4 s by the next request, which goes on at once with
# the old token; once the background fetch lands the new token is served.
# No request waits.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;
my $fast = 0.5 * $t->tf;

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

$t->token_set(expires_in => 8);

my $r = $t->http_get('/api/x');
my $t0 = time;
my ($old) = $t->issued_tokens;
is(auth($r), "Bearer $old", 'first token');

# outside the refresh window: plain hits

sleep 1.5;
$r = $t->http_get('/api/x');
is(auth($r), "Bearer $old", 'early: same token');
is($t->token_count, 1, 'early: no token request');

# inside it: the old token at once, a fetch in the background

my $wait = $t0 + 4.7 - time;
sleep $wait if $wait > 0;
$t->token_set(expires_in => 8, delay => 1.5);

$r = $t->http_get('/api/x');
is(auth($r), "Bearer $old", 'in the window: old token');
cmp_ok($r->{latency}, '<', $fast, 'in the window: no wait');
ok($t->wait_for(sub { $t->token_count == 2 }, 1), 'refresh requested');

$r = $t->http_get('/api/x');
is(auth($r), "Bearer $old", 'during the refresh: old token');
cmp_ok($r->{latency}, '<', $fast, 'during the refresh: no wait');
is($t->token_count, 2, 'during the refresh: no second token request');

my ($new, @lat);

$t->wait_for(sub {
    $r = $t->http_get('/api/x');
    push @lat, $r->{latency};
    return auth($r) ne "Bearer $old";
}, 3);

$new = ($t->issued_tokens)[1];
ok($new && $new ne $old, 'a new token was issued');
is(auth($r), "Bearer " . ($new // ''), 'the new token is served');
cmp_ok(time - $t0, '<', 7.2, 'before the old one expired');
cmp_ok((sort { $b <=> $a } @lat)[0], '<', $fast, 'no request waited');
is($t->token_count, 2, 'one refresh only');

$t->token_set;
$t->token_verified_ok;
$t->check_log_ok;

done_testing;
