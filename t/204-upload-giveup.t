#!/usr/bin/perl

# cloudauth_gcs_upload gives up on a GCS that keeps failing: retries back
# off exponentially with jitter (1 s doubling, at most 16 s) and stop 60 s
# after the first failure with a 502 that says so; nothing is stored.
# This test takes a minute by nature.

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

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 2s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /up/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

CloudAuth::FakeGCS->faults($t, init_status => 503, init_times => 1000);

my $start = time;
my ($r) = CloudAuth::Upload::upload($t, '/up/giveup', size => 1000,
                                    timeout => 120);
my $took = time - $start;
note sprintf 'gave up after %.1f s', $took;

is($r->{status}, 502, 'GCS failing for good: 502');
like($r->{json}{error}{message} // $r->{body}, qr/kept failing for 60 s/,
     'the reason says so');
cmp_ok($took, '>=', 59, 'not before 60 s');
cmp_ok($took, '<', 75 * $t->tf, 'not long after');
ok(!CloudAuth::FakeGCS->object($t, $B, 'giveup'), 'nothing stored');

my $starts = grep { $_->{uri} =~ /name=giveup&/ }
             CloudAuth::FakeGCS->requests($t);
note "$starts session starts";
cmp_ok($starts, '>=', 5, 'retried with back-off');
cmp_ok($starts, '<=', 14, 'not in a tight loop');

like($t->error_log, qr/retrying in \d+ ms \(attempt 1\)/, 'retries logged');

$t->check_log_ok;

done_testing;
