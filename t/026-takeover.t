#!/usr/bin/perl

# Re-entrancy in the engine's take-over: a worker waits for an entry whose
# fetching worker died; when the dead claim lapses it takes over, and the
# job it starts fails at once (google_impersonate whose source credential
# is backing off).  Before, that failure re-entered the wait group's check,
# which freed the group its caller was still using (a heap-use-after-free
# under AddressSanitizer, then a corrupted timer tree).  Now the waiters are
# woken through a posted event: the request gets a clean 502 and the worker
# lives on.  One worker, so that which worker does what is not left to
# chance.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use CloudAuth::Test;
use CloudAuth::FakeProviders;

my $t = CloudAuth::Test->new;

my $reader = 'reader@cloudauth-test.iam.gserviceaccount.com';
my $ro = 'https://www.googleapis.com/auth/devstorage.read_only';

CloudAuth::FakeProviders::start($t, 'iam', targets => { $reader => $ro });

$t->run(<<"EOF", workers => 1);
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential imp type=google_impersonate source=google
        target=$reader scopes=$ro endpoint=https://127.0.0.1:%%PORT_IAM%%/;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /google/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /imp/ {
            cloudauth imp;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF


sub iam { CloudAuth::FakeProviders::count($t, 'iam') }

my $r = $t->http_get('/google/x');
is($r->{status}, 200, 'the source credential has a token');
my ($source) = $r->{headers}{'x-echo-authorization'} =~ /^Bearer (\S+)/;

# the worker claims the imp entry and hangs in its IAM request; it is killed

CloudAuth::FakeProviders::set($t, 'iam', delay => 30);
my $h = $t->http_start('/imp/x');
ok($t->wait_for(sub { iam() == 1 }, 5), 'the IAM request is under way');

my ($old) = $t->worker_pids;
kill 'KILL', $old;
$t->http_end($h, 5);

ok($t->wait_for(sub { my @w = $t->worker_pids; @w == 1 && $w[0] != $old }, 5),
   'the master started a new worker');
CloudAuth::FakeProviders::set($t, 'iam');

# the new worker puts the source into back-off: its token is dropped by an
# upstream 401, and the token endpoint refuses the next (terminal: 15-30 s)

$t->revoke($source);
is($t->http_get('/google/y')->{status}, 401, 'the source token is refused');
$t->token_set(error => 'invalid_grant', error_description => 'no');
is($t->http_get('/google/z')->{status}, 502, 'the source is backing off');

# a request for imp waits for the dead worker's claim, takes over, and its
# job fails at once

my $n = iam();
my $start = time;
$r = $t->http_get('/imp/y');
my $took = time - $start;

is($r->{status}, 502, 'the take-over fails cleanly: 502');
cmp_ok($took, '<', 3 + 2 + 3 * $t->tf, 'within the claim\'s lapse');
is(iam(), $n, 'no IAM request without a source token');

my @w = $t->worker_pids;
is(scalar @w, 1, 'one worker');
ok(kill(0, $w[0]), 'the worker lives on');
is($t->http_get('/google/w')->{status}, 502, 'and answers');

like($t->error_log, qr/credential "imp": .*the source credential has no token/,
     'the reason is logged');

$t->token_set;
$t->stop;
my @bad = grep { !/worker process \d+ exited on signal 9/ } $t->check_log;
is(join("\n", @bad), '', 'no alert, no sanitizer report besides the kill');

done_testing;
