#!/usr/bin/perl

# A cold start of many subjects does not stampede the token endpoint: 500
# distinct subjects missing at the same moment, each asked for twice over
# both workers, make one token request each, never more than concurrency=
# of them in flight at the endpoint (8 by default; 3 with 300 subjects
# too), and every request gets its own subject's token: the rest wait for
# a request slot, they do not fail.  A worker killed while it holds slots
# does not keep them: they lapse with its claims.  concurrency= is checked
# by nginx -t.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

# the injected header comes back from a second server of this nginx: no
# forking upstream for a thousand requests

$t->run(<<'EOF', connections => 4096);
    cloudauth_zone 4m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 30s;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%
        "subjects=user\d+@example\.com";

    cloudauth_credential few type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% concurrency=3
        "subjects=user\d+@example\.com";

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        add_header X-Pid $pid;

        location /people/ {
            cloudauth people;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%PORT_ECHO%%;
        }

        location /few/ {
            cloudauth few;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%PORT_ECHO%%;
        }

        location /status {
            cloudauth_status;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_ECHO%%;

        location / {
            return 200 "$http_authorization";
        }
    }
EOF

# COUNT subjects from FIRST, each asked for TIMES times, all requests sent
# before any answer is read; checks what the brief above promises

sub cold_start {
    my ($path, $first, $count, $times, $n) = @_;

    my @subjects = map { "user$_\@example.com" } $first .. $first + $count - 1;
    my $before = $t->token_count;
    $t->token_in_flight_reset;

    my $start = time;
    my @handles;

    for my $round (1 .. $times) {
        push @handles, map { $t->http_start($path, 'X-User' => $_) }
                       @subjects;
    }

    my @r = $t->collect(\@handles, 60);
    my $took = time - $start;

    my @requests = ($t->token_requests)[$before .. $t->token_count - 1];
    my %token = map { ($_->{sub} // '') => $_->{token} } @requests;
    my %fetched;
    $fetched{ $_->{sub} // '' }++ for @requests;

    my @wrong;

    for my $i (0 .. $#r) {
        my $s = $subjects[$i % @subjects];
        my $want = 'Bearer ' . ($token{$s} // 'none');

        push @wrong, "$s: $r[$i]{status} " . ($r[$i]{error} // $r[$i]{body})
            if $r[$i]{status} != 200 || $r[$i]{body} ne $want;
    }

    my $what = "$path, $count subjects x $times";

    is(scalar @wrong, 0, "$what: every request 200 with its subject's token")
        or diag explain [ @wrong[0 .. ($#wrong > 9 ? 9 : $#wrong)] ];
    is(scalar @requests, $count, "$what: $count token requests");
    is(scalar(grep { $fetched{$_} == 1 } @subjects), $count,
       "$what: one for each subject");

    my %pids = map { ($_->{headers}{'x-pid'} // 0) => 1 } @r;
    is(scalar keys %pids, 2, "$what: served by both workers");

    my ($now, $max) = $t->token_in_flight;
    cmp_ok($max, '<=', $n, "$what: at most $n token requests in flight");

    # a sanity bound: the requests did run side by side
    cmp_ok($max, '>', 1, "$what: more than one at a time");

    my @lat = sort { $a <=> $b } map { $_->{latency} } @r;
    note sprintf '%s: %.1f s for all, at most %d token requests in flight; '
                 . 'answers in %.2f s (median), %.2f s (slowest)',
                 $what, $took, $max, $lat[@lat / 2], $lat[-1];
}

# 8 by default: 63 rounds of 0.05 s and what the fake itself takes

$t->token_set(delay => 0.05);
cold_start('/people/x', 1, 500, 2, 8);

# 3: 100 rounds of 0.02 s; the subjects are new to this credential

$t->token_set(delay => 0.02);
cold_start('/few/x', 1, 300, 1, 3);

# cached now: no token request, whatever the slots

my $n = $t->token_count;
my $r = $t->http_get('/few/x', 'X-User' => 'user7@example.com');
is($r->{status}, 200, 'a cached subject is served');
is($t->token_count, $n, 'without a token request');

# the status page tells the slots in use: none now

$r = $t->http_get('/status');
like($r->{body}, qr/"in_flight":\s*0\b/, 'status: in_flight 0');
like($r->{body}, qr/"concurrency":\s*3\b/, 'status: concurrency 3');

$t->check_log_ok;

# the logs begin anew: a short token log is quick to read

$t->write_file($_, '') for qw(fake_token.log error.log);

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 2s;

    cloudauth_credential two type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% concurrency=2
        "subjects=user\d+@example\.com";

    cloudauth_credential one type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% concurrency=1
        "subjects=user\d+@example\.com";

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /two/ {
            cloudauth two;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%PORT_ECHO%%;
        }

        location /one/ {
            cloudauth one;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%PORT_ECHO%%;
        }

        location /status {
            cloudauth_status;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_ECHO%%;

        location / {
            return 200 "$http_authorization";
        }
    }
EOF

# a refresh ahead needs a slot too: with none free the token held serves,
# and a later request refreshes.  A token of 16 s: its refresh window opens
# after 8 s, it is used up to 14.4 s; it is fetched now, the window is
# tried after the worker deaths below.

sub one { $t->http_get('/one/x', 'X-User' => "user$_[0]\@example.com") }

$t->token_set(expires_in => 16);

my $t0 = time;
my ($held) = one(1)->{body} =~ /^Bearer (\S+)$/;
ok($held, 'one: a token');

# a worker killed while it holds all slots: they lapse with its claims
# (cloudauth_timeout + 2 s), then a new subject gets its token

$t->token_set(delay => 30);
$n = $t->token_count;

my @hang = map { $t->http_start('/two/x', 'X-User' => "user$_\@example.com") }
           1 .. 2;
ok($t->wait_for(sub { $t->token_count == $n + 2 }, 5),
   'two token requests hang, holding both slots');

my @old = $t->worker_pids;
kill 'KILL', @old;
$t->collect(\@hang, 5);

ok($t->wait_for(sub {
    my @w = $t->worker_pids;
    @w == 2 && !grep { my $p = $_; grep { $_ == $p } @old } @w;
}, 5), 'the master started new workers');

$t->token_set;

# the slots are the dead worker's until its claims lapse, 4 s after they
# were made: the new workers see them taken

like($t->http_get('/status')->{body}, qr/"in_flight":\s*2\b/,
     'status: in_flight 2');

# a third subject waits for a slot, and fails when cloudauth_timeout passes

my $start = time;
$r = $t->http_get('/two/x', 'X-User' => 'user3@example.com');
my $took = time - $start;
isnt($r->{status}, 200, 'no slot within cloudauth_timeout: refused');
is($t->token_count, $n + 2, 'no token request made for it');
my $why = 'no token request slot came free within cloudauth_timeout '
          . '(concurrency=2)';
like($t->error_log, qr/\Q$why\E/, 'the error log says why');

# a sanity bound: it waited (2 s), it was not refused at once
cmp_ok($took, '>=', 1.5, 'after waiting for a slot');

$t->token_set;
$start = time;

ok($t->wait_for(sub {
    $t->http_get('/two/x', 'X-User' => 'user4@example.com')->{status} == 200;
}, 15), 'the dead worker\'s slots lapsed: a new subject got its token');
note sprintf 'a token %.1f s after the death', time - $start;

$r = $t->http_get('/two/x', 'X-User' => 'user1@example.com');
is($r->{status}, 200, 'a subject of the dead worker gets its token too');

# the refresh window of one's token is open; another subject's slow token
# request takes the only slot

my $wait = $t0 + 8.3 - time;
sleep $wait if $wait > 0;

$n = $t->token_count;
# the slow request holds the slot 1.5 s after the fake has it (within the
# 2 s of cloudauth_timeout); the wait for the fake to have it returns as
# soon as it does, and may take up to 1.9 s on a loaded machine (past 2 s
# the request itself would time out)
$t->token_set(delay => 1.5);
my $busy = $t->http_start('/one/x', 'X-User' => 'user2@example.com');
ok($t->wait_for(sub { $t->token_count == $n + 1 }, 1.9),
   'one: the only slot is taken');

$r = one(1);
is($r->{body}, "Bearer $held", 'one: due for refresh, no slot: the token held');
cmp_ok($r->{latency}, '<', 1, 'one: at once');      # a sanity bound
is($t->token_count, $n + 1, 'one: no refresh without a slot');

$t->token_set;
is($t->http_end($busy)->{status}, 200, 'one: the slow request got its token');

is(one(1)->{body}, "Bearer $held", 'one: the token held, a refresh runs');
ok($t->wait_for(sub { one(1)->{body} ne "Bearer $held" }, 2),
   'one: then the refreshed token');
is($t->token_count, $n + 2, 'one: one refresh');
cmp_ok(time - $t0, '<', 14.4, 'one: before the token held was used up');

$t->stop;
my @bad = grep { !/worker process \d+ exited on signal 9/ } $t->check_log;
is(join("\n", @bad), '', 'no alert besides the killed workers');

# nginx -t

for my $bad ('0', '1025', 'x', '', '-1', '8x') {
    my ($rc, $out) = $t->nginx_t(<<"EOF");
    cloudauth_credential g type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% concurrency=$bad;
EOF
    isnt($rc, 0, "concurrency=$bad: nginx -t fails");
    my $why = 'cloudauth_credential "g": concurrency= must be a number of '
              . "token requests in flight from 1 to 1024, not \"$bad\"";
    like($out, qr/\Q$why\E/, "concurrency=$bad: says why");
}

my ($rc, $out) = $t->nginx_t(<<'EOF');
    cloudauth_credential g type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% concurrency=1024;
EOF
is($rc, 0, 'concurrency=1024: nginx -t passes') or diag $out;

($rc, $out) = $t->nginx_t(<<'EOF');
    cloudauth_credential z type=zoom_jwt api_key=k
        api_secret_file=/nonexistent concurrency=2;
EOF
like($out, qr/type=zoom_jwt signs its tokens here .* remove concurrency=/,
     'a kind that signs refuses concurrency=');

done_testing;
