#!/usr/bin/perl

# Single flight and never blocking: a cold burst of 200 concurrent requests
# spread over both workers makes exactly one token request and all get the
# same token; while a token request takes 3 s, both workers keep serving
# other locations at once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;
my $tf = $t->tf;

# reuseport: the kernel spreads connections over both workers

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential slow type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        add_header X-Pid $pid;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /slow/ {
            cloudauth slow;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /plain/ {
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /static {
            return 200 "static\n";
        }
    }
EOF

# cold burst: the token request takes 0.5 s, so all 200 arrive during it

$t->token_set(delay => 0.5);

my @r = $t->burst('/api/x', 200);

is(scalar(grep { $_->{status} == 200 } @r), 200, 'burst: all 200 answered 200')
    or diag explain [ map { "$_->{status} $_->{body}" }
                      grep { $_->{status} != 200 } @r ];
is($t->token_count, 1, 'burst: exactly one token request');
my @bl = sort { $a <=> $b } map { $_->{latency} } @r;
note sprintf 'burst of 200: answers in %.0f ms (median), %.0f ms (p99), '
             . '%.0f ms (slowest); the token request takes 500 ms, the '
             . 'forking Perl upstream most of the rest (bench/ measures the '
             . 'gateway itself)',
             map { 1000 * $_ } $bl[100], $bl[197], $bl[-1];

my ($token) = $t->issued_tokens;
my %auth = map { ($_->{headers}{'x-echo-authorization'} // 'none') => 1 } @r;
is_deeply([keys %auth], ["Bearer $token"], 'burst: all got the same token');

my %pids = map { ($_->{headers}{'x-pid'} // 0) => 1 } @r;
is(scalar keys %pids, 2, 'burst: served by both workers');

# a slow token request blocks no worker

$t->token_set(delay => 3);

my $slow = $t->http_start('/slow/x');
ok($t->wait_for(sub { $t->token_count == 2 }, 2), 'slow token request sent');

my $start = time;
my (@lat, %seen);

while (time - $start < 2) {
    for my $path ('/plain/x', '/static', '/api/x') {
        my $r = $t->http_get($path);
        push @lat, $r->{latency};
        $seen{ $r->{headers}{'x-pid'} // 0 } = 1;
        $r->{status} == 200 or diag "$path: $r->{status}";
    }
}

my @sorted = sort { $a <=> $b } @lat;
note sprintf '%d requests during the slow token request: median %.1f ms, '
             . 'max %.1f ms', scalar @lat, 1000 * $sorted[@sorted / 2],
             1000 * $sorted[-1];

cmp_ok(scalar @lat, '>=', 12, 'requests served meanwhile');
cmp_ok((sort { $b <=> $a } @lat)[0], '<', 0.5 * $tf,
       'each within 0.5 s during the slow token request');
is(scalar keys %seen, 2, 'both workers served meanwhile');

my $r = $t->http_end($slow);
is($r->{status}, 200, 'slow request served');
cmp_ok($r->{latency}, '>=', 2.5, 'after the slow token request');
is($t->token_count, 2, 'no other token request');

$t->token_set;
$t->token_verified_ok;
$t->check_log_ok;

done_testing;
