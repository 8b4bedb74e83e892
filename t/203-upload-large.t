#!/usr/bin/perl

# cloudauth_gcs_upload, a large body: 100 MiB sent chunked (length unknown)
# is stored intact through 8 MiB chunks, while the memory of the workers
# (VmRSS) grows by less than 2 x chunk_size, sampled throughout, and is
# given back afterwards.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

my $B = 'test-bucket';
my $CHUNK = 8 * 1024 * 1024;
my $SIZE = 100 * 1024 * 1024;

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 200m;

        location /upload/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=8m
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

# warm both workers up (TLS, curl, the token) with small bodies, so the
# growth measured includes the chunk buffer itself

for my $i (1 .. 4) {
    my ($r) = CloudAuth::Upload::upload($t, "/upload/warm$i",
                                        size => 1000);
    is($r->{status}, 201, "warm-up $i") or diag $r->{body};
}

my @w = $t->worker_pids;
my %before = map { $_ => CloudAuth::Upload::rss($_) } @w;
my %peak = %before;

my $start = time;
my ($r, $sent) = CloudAuth::Upload::upload($t, '/upload/big.bin',
    size => $SIZE, chunked => 1, piece => 256 * 1024, timeout => 120,
    during => sub {
        for my $pid (@w) {
            my $rss = CloudAuth::Upload::rss($pid);
            $peak{$pid} = $rss if $rss > $peak{$pid};
        }
    });
my $took = time - $start;

is($r->{status}, 201, '100 MiB chunked: 201') or diag $r->{body};
is($r->{json}{size}, $SIZE, '100 MiB chunked: size');

# the request is freed just after its answer is sent
my %after;
$t->wait_for(sub {
    %after = map { $_ => CloudAuth::Upload::rss($_) } @w;
    !grep { $after{$_} - $before{$_} >= 2 * 1048576 } @w;
}, 3);

my ($growth, $after) = (0, 0);
for my $pid (@w) {
    my $g = $peak{$pid} - $before{$pid};
    $growth = $g if $g > $growth;
    my $a = $after{$pid} - $before{$pid};
    $after = $a if $a > $after;
}

diag(sprintf '100 MiB in %.1f s (%.0f MiB/s); worker RSS before %s MiB, '
             . 'peak growth %.1f MiB, after %.1f MiB',
     $took, $SIZE / 1048576 / $took,
     join('/', map { sprintf '%.1f', $before{$_} / 1048576 } @w),
     $growth / 1048576, $after / 1048576);

SKIP: {
    skip 'memory is not measurable under a sanitizer or valgrind', 2
        if $ENV{TEST_NGINX_PRELOAD} || $ENV{TEST_NGINX_VALGRIND};

    cmp_ok($growth, '<', 2 * $CHUNK,
           'worker memory grew less than 2 x chunk_size');
    cmp_ok($after, '<', 2 * 1048576,
           'the chunk buffer is given back after the upload');
}

my @put = grep { $_->{method} eq 'PUT' && $_->{uri} =~ /upload_id/ }
          CloudAuth::FakeGCS->requests($t);
my @big = grep { ($_->{content_range} // '') =~ m{^bytes \d+-\d+/\*$} }
          @put[-13 .. -1];
is(scalar @big, 12, '12 chunks of unknown total');
ok(!grep({ $_->{length} != $CHUNK } @big), 'each of 8 MiB');
is($put[-1]{content_range}, 'bytes 100663296-104857599/104857600',
   'the final chunk with the total');

CloudAuth::Upload::stored_ok($t, $B, 'big.bin', $sent, '100 MiB');

$t->check_log_ok;

done_testing;
