#!/usr/bin/perl

# "make run" from a checkout nobody else can enter: the checkout is copied
# under a 0700 directory (as a clone in /root is on Debian), tools/run.pl is
# started from that copy with the bundled stand-ins, and the upload page,
# an injected token and an upload all work.  nginx started as root runs its
# workers as nobody, so this fails whenever a worker reads from the
# checkout at run time.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(sleep);

use CloudAuth::Test;

my $root = $CloudAuth::Test::ROOT;
my $t = CloudAuth::Test->new(fakes => 0);
my $port = $t->release_port('run');

# the checkout's files (git's list when there is one), under a 0700 parent

my $top = tempdir('cloudauth-home-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $top;
my $co = "$top/ngx_cloudauth";

my @files = -d "$root/.git"
    ? split /\0/, `git -C '$root' ls-files -z`
    : map { s{^\Q$root\E/}{}r } glob("$root/{conf.example,html/*,tools/*}"),
          glob("$root/t/lib/CloudAuth/*");

for my $f (@files) {
    next unless -f "$root/$f";
    (my $d = "$co/$f") =~ s{/[^/]+$}{};
    system('mkdir', '-p', $d) == 0 && system('cp', "$root/$f", $d) == 0
        or die "cannot copy $f\n";
}

is((stat $top)[2] & 0777, 0700, 'the checkout sits under a 0700 directory');
ok(-f "$co/tools/run.pl" && -f "$co/html/upload.html", 'checkout copied');

# make run, from the copy

my $pid = fork // die "fork: $!";

if (!$pid) {
    setpgrp;
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', $t->dir . '/run.log';
    open STDERR, '>&', \*STDOUT;
    delete @ENV{qw(GOOGLE_APPLICATION_CREDENTIALS ZOOM_ACCOUNT_ID
                   CLOUDAUTH_BUCKET)};
    $ENV{CLOUDAUTH_PORT} = $port;
    $ENV{CLOUDAUTH_MODULE} = $t->{module};
    $ENV{CLOUDAUTH_NGINX} = $t->{binary};
    $ENV{CLOUDAUTH_PRELOAD} = $ENV{TEST_NGINX_PRELOAD}
        if $ENV{TEST_NGINX_PRELOAD};
    { no warnings 'exec'; exec 'perl', "$co/tools/run.pl"; }
    POSIX::_exit(127);
}

# up: nginx answers (a bound listening socket is not enough: under ASan the
# workers take a while after the master has bound it)
my $up = $t->wait_for(sub {
    waitpid($pid, WNOHANG) == $pid
        || (IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
            && $t->http_get('/', -port => $port)->{status});
}, 60);

ok($up && kill(0, $pid), 'make run came up')
    or diag($t->read_file('run.log'));

my $r = $t->http_get('/', -port => $port);
is($r->{status}, 200, 'the upload page answers 200')
    or diag($t->read_file('run.log'));
like($r->{body}, qr/<html/i, 'and is the page');

$r = $t->http_get('/storage/b', -port => $port);
is($r->{status}, 200, 'a proxied request answers 200');
like($r->{body}, qr/Bearer ya29\./, 'with an injected token');

$r = $t->http_get('/upload/hello.txt', -port => $port, -method => 'PUT',
                  -body => "hello from a private checkout\n");
is($r->{status}, 201, 'an upload is stored') or diag($r->{body});

# the workers are not root (when the suite is): the test means something

my ($master) = $t->read_file("$co/build/run/nginx.pid") =~ /(\d+)/;
my @uids;

for my $stat (glob '/proc/[0-9]*/stat') {
    my ($ppid) = ($t->read_file($stat) =~ /^\d+ \(.*\) \S (\d+)/s)
        or next;
    next unless $master && $ppid == $master;
    (my $status = $stat) =~ s/stat$/status/;
    push @uids, $t->read_file($status) =~ /^Uid:\s+(\d+)/m;
}

ok(@uids && !grep({ $_ == $> && $> == 0 } @uids),
   $> == 0 ? 'the workers do not run as root' : 'the workers run');

# Ctrl-C stops everything

kill 'INT', $pid;
my $gone = $t->wait_for(sub { waitpid($pid, WNOHANG) == $pid }, 20);
ok($gone, 'make run stops on SIGINT');
kill 'KILL', -$pid unless $gone;

unlike($t->read_file('run.log'), qr/\[(alert|crit|emerg)\]|Sanitizer/,
       'no alert, crit, emerg or sanitizer report')
    or diag($t->read_file('run.log'));

done_testing;
