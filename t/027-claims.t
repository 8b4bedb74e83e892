#!/usr/bin/perl

# Claims: a worker that leaves on a reload while it fetches releases its
# claim, so a new worker fetches at once instead of waiting for the claim
# to lapse (cloudauth_timeout + 2 s).  Before, the claim stayed behind and
# the first request after the reload waited ~10 s here.  (Claims are timed
# on the monotonic clock; a clock step is not provoked here: it would step
# the whole machine's clock.)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

my $conf = <<'EOF';
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 8s;

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

$t->run($conf);

# a fetch that takes long; its client goes away; nginx is reloaded

$t->token_set(delay => 6);
my $h = $t->http_start('/api/a');
ok($t->wait_for(sub { $t->token_count == 1 }, 5), 'the fetch is under way');
close $h->{sock};

ok($t->reload($conf), 'reloaded: the old workers left');
$t->token_set;

# the claim went with the worker that held it

my $start = time;
my $r = $t->http_get('/api/b');
my $took = time - $start;
note sprintf 'the first request after the reload took %.2f s', $took;

is($r->{status}, 200, 'a token after the reload');
like($r->{headers}{'x-echo-authorization'} // '', qr/^Bearer ya29\.fake-/,
     'injected');

# the claim's lapse would be 8 + 2 s after the first fetch began; a fetch
# here takes milliseconds, so 4 s leaves a wide margin either way
cmp_ok($took, '<', 4 * $t->tf, 'without waiting for the claim to lapse');

$t->check_log_ok;

done_testing;
