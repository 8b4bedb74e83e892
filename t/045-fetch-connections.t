#!/usr/bin/perl

# A socket the fetch client cannot watch fails that one transfer, never the
# worker's whole curl multi handle.  With worker_connections all taken by
# client connections, a token request that needs a socket fails at once
# (502 with the reason, logged) and so does the start of an upload session
# (retried); once the connections are released, the next token requests and
# uploads of that same worker succeed.  Before, the socket callback returned
# -1: libcurl marked the multi handle dead, and every later fetch and upload
# in the worker failed, putting the shared cache entry into back-off too.
#
# One worker, 16 connections; a held connection is a request whose answer
# is sent at 1 byte/s (busy, so nginx never closes it to make room), and a
# connection nginx has no room for is closed at once: that is how the test
# knows the worker has no free connection left.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time);
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

mkdir $t->dir . '/html';
mkdir $t->dir . '/html/slow';
$t->write_file('html/slow/big', 'x' x 1048576, 0644);

$t->run(<<'EOF', workers => 1, connections => 16);
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential gcs type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location = /ping {
            return 200 "pong\n";
        }

        location /slow/ {
            root %%TESTDIR%%/html;
            limit_rate 1;
            limit_rate_after 1k;
        }

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /gcs-token/ {
            cloudauth gcs;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /upload/ {
            cloudauth_gcs_upload gcs bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

# reads one HTTP/1.1 answer (Content-Length bodies) or up to the close
sub read_response {
    my ($s, $timeout) = @_;

    my $sel = IO::Select->new($s);
    my $end = time + ($timeout // 20) * $t->tf;
    my $in = '';

    while (time < $end) {
        last if CloudAuth::Upload::response_complete($in);
        $sel->can_read($end - time) or last;
        my $n = sysread $s, $in, 65536, length $in;
        last if !$n;
    }

    return CloudAuth::Test::parse_response($in);
}

sub connect_nginx {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port('nginx'))
        or die "connect: $!";
    return $s;
}

# a connection nginx has taken (it answered a request on it), with the
# header of a second request begun: busy, it is never closed for room
sub begin {
    my ($text) = @_;
    my $s = connect_nginx();
    syswrite $s, "GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n";
    my $r = read_response($s);
    die "no pong: $r->{raw}\n" unless $r->{body} eq "pong\n";
    syswrite $s, $text;
    return $s;
}

# one more connection with an answer in progress, or undef when the worker
# had no connection for it (it closes such a connection at once)
sub hold {
    my $s = connect_nginx();
    syswrite $s, "GET /slow/big HTTP/1.0\r\nHost: localhost\r\n\r\n";

    my $sel = IO::Select->new($s);
    my $end = time + 20 * $t->tf;
    my $in = '';

    while ($in !~ /\r\n\r\n/) {
        die "no answer on a held connection\n" if time >= $end;
        $sel->can_read($end - time) or next;
        my $n = sysread $s, $in, 4096, length $in;
        return undef if !$n;
    }

    die "held: $in\n" unless $in =~ m{^HTTP/1\.[01] 200};
    return $s;
}

# holds connections until the worker has none left
sub exhaust {
    my @held;
    for (1 .. 64) {
        my $s = hold() // return @held;
        push @held, $s;
    }
    die "worker_connections never ran out\n";
}

sub logged_since {
    my ($mark, $re) = @_;
    return grep { $_ =~ $re } split /\n/, substr $t->error_log, $mark;
}

my $full = qr/worker_connections are not enough/;
my @workers = $t->worker_pids;

# a token request while the worker has no free connection

my $trigger = begin("GET /api/x HTTP/1.1\r\nHost: localhost\r\n");
my @held = exhaust();
cmp_ok(scalar @held, '>=', 5, 'connections held: ' . scalar @held);

my $mark = length $t->error_log;
my $n = $t->token_count;
my $start = time;

syswrite $trigger, "\r\n";
my $r = read_response($trigger);
my $took = time - $start;

is($r->{status}, 502, 'no connection for the token request: 502');
like($r->{body}, qr/\S/, 'with a reason') or diag $r->{raw};
cmp_ok($took, '<', 5, 'at once, not after cloudauth_timeout');
ok($t->wait_for(sub {
       logged_since($mark,
                    qr/\[error\].*"google": token request failed: .*$full/)
   }, 5), 'logged with the credential and the reason')
    or diag $t->tail_error_log;
is($t->token_count, $n, 'nothing reached the token endpoint');

close $trigger;
close $_ for @held;

# the same worker fetches again once connections are free (after the
# entry's back-off of about a second): a fresh token from the endpoint

my $ok = $t->wait_for(sub { $t->http_get('/api/y')->{status} == 200 }, 20);
ok($ok, 'connections released: the next request gets a token');
is($t->token_count, $n + 1, 'the token endpoint got the token request');
my $last = ($t->token_requests)[-1];
ok($last && $last->{verified}, 'and it was a good one');
is($t->http_get('/api/z')->{status}, 200, 'and the one after');

# an upload whose session cannot start for want of a connection

is($t->http_get('/gcs-token/x')->{status}, 200, 'upload credential: token');

$trigger = begin("PUT /upload/during HTTP/1.1\r\nHost: localhost\r\n"
                 . "Content-Length: 5\r\n");
@held = exhaust();

$mark = length $t->error_log;
syswrite $trigger, "\r\nhello";

ok($t->wait_for(sub {
       logged_since($mark,
                    qr/\[warn\].*upload: GCS answered 0: .*$full.*retrying/)
   }, 10), 'upload: the session start failed at once, and is retried')
    or diag $t->tail_error_log;

close $_ for @held;

$r = read_response($trigger, 60);
is($r->{status}, 201, 'connections released: that upload is stored')
    or diag $r->{raw};
CloudAuth::Upload::stored_ok($t, 'test-bucket', 'during',
                             CloudAuth::Upload::sent_of('hello'), 'upload');
close $trigger;

my $data = CloudAuth::Upload::pattern(300000);
($r) = CloudAuth::Upload::put($t, '/upload/after', $data);
is($r->{status}, 201, 'the next upload is stored') or diag $r->{raw};
CloudAuth::Upload::stored_ok($t, 'test-bucket', 'after',
                             CloudAuth::Upload::sent_of($data),
                             'next upload');

is("@{[ $t->worker_pids ]}", "@workers",
   'one and the same worker served it all (none crashed)');
$t->token_verified_ok;

# nginx says "16 worker_connections are not enough" at [alert] each time
# it had no connection to give (the held-out client connections and the
# fetch's socket): that is what this test does on purpose; nothing else
# may be there

$t->stop;
my @bad = grep { !/\[alert\] .*\b16 worker_connections are not enough\b/ }
          $t->check_log;
is(join("\n", @bad), '', 'no other alert, crit, emerg or sanitizer report');

done_testing;
