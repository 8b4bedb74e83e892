#!/usr/bin/perl
# A token endpoint for benchmarks: plain HTTP on loopback, one child per
# connection, answers after DELAY seconds with a token living EXPIRES seconds,
# and appends "<unix time> <token>" to LOG for every request (LOG "-": no
# log). With LENGTH, tokens are padded to LENGTH bytes.
#
#   fake_token.pl PORT DELAY EXPIRES LOG [LENGTH]

use strict;
use warnings;
use HTTP::Daemon;
use HTTP::Response;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time sleep);

my ($port, $delay, $expires, $log, $length) = @ARGV;
$SIG{CHLD} = 'IGNORE';

my $d = HTTP::Daemon->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                          ReuseAddr => 1, Listen => 1024)
    or die "listen: $!";

my $n = 0;

while (my $c = $d->accept) {
    $n++;
    if (fork) { $c->close; next; }

    # the answer goes out in more than one write: without this, each waits
    # for the client's delayed ACK (40 ms)
    setsockopt($c, IPPROTO_TCP, TCP_NODELAY, 1) or die "TCP_NODELAY: $!";

    while (my $req = $c->get_request) {
        sleep $delay if $delay > 0;
        my $token = sprintf 'ya29.bench-%d-%d-%06d', $$, $n, int rand 1e6;
        $token .= 'x' x ($length - length $token)
            if $length && $length > length $token;
        if ($log ne '-') {
            open my $fh, '>>', $log or die;
            printf $fh "%.3f %s\n", time, $token;
            close $fh;
        }
        my $r = HTTP::Response->new(200);
        $r->header('Content-Type' => 'application/json');
        $r->content(qq({"access_token":"$token","expires_in":$expires,)
                    . qq("token_type":"Bearer"}));
        $c->send_response($r);
    }

    exit 0;
}
