#!/usr/bin/perl

# Many uploads through one worker: 50 at once, each in chunks that GCS (the
# fake, "slow") answers two seconds late.  None may wait in a queue behind a
# per-host connection limit, and time spent waiting for a connection is no
# stall: every object is stored whole, with no "no progress" retry.
# cloudauth_timeout is 30 s: 50 TLS handshakes with the Perl fake on a
# loaded machine may take seconds (the session starts are bounded by it);
# a queue behind 8 connections would still wait well over 30 s.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX ();
use Test::More;
use Time::HiRes qw(time);

use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $N = 50;
my $Q = 256 * 1024;
my $B = 'test-bucket';

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

$t->run(<<'EOF', workers => 1);
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 30s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /upload/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

# the token first, so that all start at once
my ($r) = CloudAuth::Upload::put($t, '/upload/warm', 'x');
is($r->{status}, 201, 'a first upload');

$t->write_file('gcs_faults.json', '{"slow": 2}');

my $size = 3 * $Q + 100;
my $data = CloudAuth::Upload::pattern($size);
my $start = time;
my %kids;

for my $i (1 .. $N) {
    my $pid = fork // die "fork: $!";

    if (!$pid) {
        my ($res) = CloudAuth::Upload::upload($t, "/upload/many-$i",
                                              size => $size, timeout => 120);
        POSIX::_exit($res->{status} == 201 ? 0 : 1);
    }

    $kids{$pid} = $i;
}

my $failed = 0;

while (%kids) {
    my $pid = waitpid(-1, 0);
    last if $pid <= 0;
    $failed++ if $?;
    delete $kids{$pid};
}

diag(sprintf '%d uploads of %d bytes, 4 slow GCS answers each (2 s): %.1f s',
             $N, $size, time - $start);

is($failed, 0, "$N concurrent uploads through one worker: all 201");

my $whole = grep {
    my $o = CloudAuth::FakeGCS->object($t, $B, "many-$_");
    $o && $o->{data} eq $data
} 1 .. $N;
is($whole, $N, 'every object stored whole');

unlike($t->error_log, qr/no progress for/,
       'no upload was taken for stalled while it waited for a connection');
unlike($t->error_log, qr/retrying in/, 'and none was retried');

done_testing;
