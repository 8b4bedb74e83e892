#!/usr/bin/perl

# The README's quick start, as a newcomer types it: tools/run.pl started
# the way "make run" starts it (the bundled stand-ins, conf.example), then
# every command of the quick start's curl block, read from README.md and
# run as it stands there (only localhost:8080 becomes this run's port), each
# checked against what its comment promises.  A command whose comment this
# test does not know fails it: a changed quick start needs its check here.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use JSON::PP qw(decode_json);
use POSIX qw(WNOHANG);
use Test::More;

use CloudAuth::Test;

my $root = $CloudAuth::Test::ROOT;
my $t = CloudAuth::Test->new(fakes => 0);
my $port = $t->release_port('run');

# the quick start's commands: the sh block after "make run", the one that
# talks to localhost:8080

my $readme = $t->read_file("$root/README.md");
my ($block) = $readme =~ /^```sh\n((?:(?!```).)*?localhost:8080(?:(?!```).)*)```/ms
    or BAIL_OUT('README.md: no quick start block of curl commands');

my @cmds;
for my $line (split /\n/, $block) {
    next unless $line =~ /\S/;
    my ($cmd, $comment) = $line =~ /^(curl\s.*?)\s+#\s+(.*)$/
        or BAIL_OUT("README.md quick start: not a commented curl: $line");
    push @cmds, [ $cmd, $comment ];
}

cmp_ok(scalar @cmds, '>=', 3, 'the quick start has its commands');

# make run: tools/run.pl with the module and nginx the suite runs

my $prefix = tempdir('cloudauth-run-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $pid = fork // die "fork: $!";

if (!$pid) {
    setpgrp;
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', $t->dir . '/run.log';
    open STDERR, '>&', \*STDOUT;
    delete @ENV{qw(GOOGLE_APPLICATION_CREDENTIALS ZOOM_ACCOUNT_ID
                   ZOOM_CLIENT_ID ZOOM_CLIENT_SECRET_FILE CLOUDAUTH_BUCKET)};
    $ENV{CLOUDAUTH_PORT} = $port;
    $ENV{CLOUDAUTH_RUN_PREFIX} = $prefix;
    $ENV{CLOUDAUTH_MODULE} = $t->{module};
    $ENV{CLOUDAUTH_NGINX} = $t->{binary};
    $ENV{CLOUDAUTH_PRELOAD} = $ENV{TEST_NGINX_PRELOAD}
        if $ENV{TEST_NGINX_PRELOAD};
    { no warnings 'exec'; exec 'perl', "$root/tools/run.pl"; }
    POSIX::_exit(127);
}

my $up = $t->wait_for(sub {
    waitpid($pid, WNOHANG) == $pid
        || $t->http_get('/cloudauth/status', -port => $port)->{status};
}, 60);

ok($up && kill(0, $pid), 'make run came up')
    or BAIL_OUT('make run: ' . $t->read_file('run.log'));

# what each comment promises

my ($sa_token, %seen);

my @promises = (
    [ qr/^the echo upstream shows "Authorization: Bearer ya29\.…"$/ => sub {
        my ($out) = @_;
        ($sa_token) = $out =~ /^header: Authorization: Bearer (ya29\.\S+)$/m;
        ok($sa_token, 'the echo upstream shows "Authorization: Bearer ya29.…"')
            or diag($out);
    } ],
    [ qr/^a token for alice\@example\.com$/ => sub {
        my ($out) = @_;
        my ($tok) = $out =~ /^header: Authorization: Bearer (ya29\.\S+)$/m;
        ok($tok, 'alice: a Bearer ya29.… token') or diag($out);
        isnt($tok // '', $sa_token // '', "alice's is not the service account's");
        $seen{alice} = 1;
    } ],
    [ qr{^403: /drive/ acts for a user, none named$} => sub {
        my ($out) = @_;
        is($out, "403\n", 'no X-User-Email: 403');
    } ],
    [ qr/^the same with a Zoom token$/ => sub {
        my ($out) = @_;
        like($out, qr/^header: Authorization: Bearer eyJzv\.zoom-fake-\S+$/m,
             'the echo upstream shows a Zoom token');
        $seen{zoom} = 1;
    } ],
    [ qr/^what the gateway holds: the three tokens above$/ => sub {
        my ($out) = @_;
        my $st = eval { decode_json($out) };
        ok($st, 'the status page is JSON') or return diag($out);
        my %subj = map {
            my $c = $_;
            ($c => [ map { $_->{subject} }
                     @{ $st->{credentials}{$c}{entries} || [] } ]);
        } keys %{ $st->{credentials} || {} };
        is_deeply($subj{google}, [''], "google: the service account's own");
        is_deeply($subj{google_users}, ['alice@example.com'],
                  'google_users: alice@example.com');
        is(scalar @{ $subj{zoom} || [] }, 1, 'zoom: one token');
    } ],
);

for my $c (@cmds) {
    my ($cmd, $comment) = @$c;
    (my $run = $cmd) =~ s/localhost:8080\b/localhost:$port/g;

    my ($check) = map { $_->[1] } grep { $comment =~ $_->[0] } @promises;
    if (!$check) {
        fail("README.md quick start: no check for \"$comment\" ($cmd)");
        next;
    }

    note("\$ $cmd");
    my $out = `$run 2>&1`;
    is($? >> 8, 0, "$cmd: exit 0");
    $check->($out);
}

# Ctrl-C stops everything

kill 'INT', $pid;
my $gone = $t->wait_for(sub { waitpid($pid, WNOHANG) == $pid }, 20);
ok($gone, 'make run stops on SIGINT');
kill 'KILL', -$pid unless $gone;

unlike($t->read_file('run.log'), qr/\[(alert|crit|emerg)\]|Sanitizer/,
       'no alert, crit, emerg or sanitizer report')
    or diag($t->read_file('run.log'));

done_testing;
