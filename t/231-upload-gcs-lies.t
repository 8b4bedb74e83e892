#!/usr/bin/perl

# A GCS that lies: a streamed request (a body of known length, no
# chunk_size=) is answered 503 before its body has all come, and the status
# query that follows claims more bytes than the gateway was ever sent.  The
# upload fails with 502 "GCS reports bytes it was not sent", the worker
# lives (it crashed once: the kept buffer's arithmetic went below zero).

BEGIN { $ENV{CLOUDAUTH_FAKE_LIE} = 6 * 1048576 - 1 }

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep);
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 20m;

        location /up/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

my @workers = $t->worker_pids;

# the client sends slowly: GCS's early answer comes with most of it unsent
my ($r) = CloudAuth::Upload::upload($t, '/up/lie', size => 6 * 1048576,
                                    during => sub { sleep 0.02 });

is($r->{status}, 502, 'GCS claiming bytes it was not sent: 502');
like($r->{json}{error}{message} // '', qr/not sent/, 'the reason');
like($t->error_log, qr/more than the \d+ it was sent/, 'logged');
unlike($t->error_log, qr/exited on signal/, 'no worker died');
is(join(' ', sort $t->worker_pids), join(' ', sort @workers),
   'the same workers');

$t->check_log_ok;

done_testing;
