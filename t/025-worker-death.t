#!/usr/bin/perl

# A worker that dies while fetching does not wedge the entry: its claim
# expires (cloudauth_timeout + 2 s) and the next request fetches again,
# in a worker the master started in its place.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 2s;

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

# a fetch that hangs; the worker doing it (any of the two) is killed

$t->token_set(delay => 30);
my $h = $t->http_start('/api/hang');
sleep 0.5;

my @old = $t->worker_pids;
is(scalar @old, 2, 'two workers');
kill 'KILL', @old;

my $r = $t->http_end($h, 5);
isnt($r->{status}, 200, 'the request of the dead worker got no token');

ok($t->wait_for(sub {
    my @w = $t->worker_pids;
    @w == 2 && !grep { my $p = $_; grep { $_ == $p } @old } @w;
}, 5), 'the master started new workers');

# the claim of the dead worker lapses; a new fetch succeeds

$t->token_set;
my $start = time;
$r = $t->http_get('/api/after');
my $took = time - $start;
note sprintf 'the request after the death took %.2f s', $took;

is($r->{status}, 200, 'the entry is not wedged');
like($r->{headers}{'x-echo-authorization'} // '', qr/^Bearer ya29\.fake-/,
     'a token was injected');
cmp_ok($took, '<', 2 + 2 + 2 * $t->tf, 'within the claim timeout');

my @issued = $t->issued_tokens;
cmp_ok(scalar @issued, '>=', 1, 'a token was fetched after the death');

$r = $t->http_get('/api/again');
is($r->{status}, 200, 'then served from the cache');
is(scalar($t->issued_tokens), scalar @issued, 'without another fetch');

$t->stop;
my @bad = grep { !/worker process \d+ exited on signal 9/ } $t->check_log;
is(join("\n", @bad), '', 'no alert besides the killed workers');

done_testing;
