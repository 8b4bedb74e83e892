#!/usr/bin/perl
# A token endpoint for benchmarks: plain HTTP on loopback, one child per
# connection, answers after DELAY seconds with a token living EXPIRES seconds,
# and appends "<unix time> <token>" to LOG for every request.
#
#   fake_token.pl PORT DELAY EXPIRES LOG

use strict;
use warnings;
use HTTP::Daemon;
use HTTP::Response;
use Time::HiRes qw(time sleep);

my ($port, $delay, $expires, $log) = @ARGV;
$SIG{CHLD} = 'IGNORE';

my $d = HTTP::Daemon->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                          ReuseAddr => 1, Listen => 1024)
    or die "listen: $!";

my $n = 0;

while (my $c = $d->accept) {
    $n++;
    if (fork) { $c->close; next; }

    while (my $req = $c->get_request) {
        sleep $delay if $delay > 0;
        my $token = sprintf 'ya29.bench-%d-%d-%06d', $$, $n, int rand 1e6;
        open my $fh, '>>', $log or die;
        printf $fh "%.3f %s\n", time, $token;
        close $fh;
        my $r = HTTP::Response->new(200);
        $r->header('Content-Type' => 'application/json');
        $r->content(qq({"access_token":"$token","expires_in":$expires,)
                    . qq("token_type":"Bearer"}));
        $c->send_response($r);
    }

    exit 0;
}
