#!/usr/bin/perl

# cloudauth_gcs_upload under failure: GCS answering 503 mid-stream or on
# the final chunk, dropping the connection, stalling, keeping fewer bytes
# than it was sent, failing the session start, losing the session (404),
# storing other bytes than were sent; the client going away mid-stream; no
# token to be had.  Transient failures are resumed from the Range GCS
# reports and the object is exactly what was sent; the others fail with a
# clear 502 and the session cancelled.  Also checks the fake GCS is as
# strict as GCS.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use Time::HiRes qw(time);
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
my $gcs = CloudAuth::Upload::start_gcs($t);

my $B = 'test-bucket';
my $tf = CloudAuth::Test::tf();

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 2s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential broken type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%
        token_url=https://127.0.0.1:%%PORT_CLOSED%%/token;

    log_format upload '$uri $status $cloudauth_upload_status '
                      '$cloudauth_upload_bytes';

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 20m;
        access_log %%TESTDIR%%/upload.log upload;

        location /up/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /slow/ {
            client_body_timeout 1s;
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /big/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=1m
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location = /status {
            cloudauth_status;
        }

        location /broken/ {
            cloudauth_gcs_upload broken bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

sub faults { CloudAuth::FakeGCS->faults($t, @_) }

sub session_of {
    my ($name) = @_;
    my ($s) = grep { $_->{name} eq $name } CloudAuth::FakeGCS->sessions($t);
    return $s;
}

# requests on the session of NAME, after its start
sub session_requests {
    my ($name) = @_;
    my $s = session_of($name) or return ();
    return grep { $_->{uri} =~ /upload_id=$s->{id}\b/ }
           CloudAuth::FakeGCS->requests($t);
}

sub shape {
    return join ' ', map {
        my $cr = $_->{content_range} // '-';
        $cr =~ s/^bytes //;
        "$_->{method}($cr)=$_->{status}"
    } @_;
}

# resumed: 503 mid-stream

faults(fail_after => 600000);
my $start = time;
my ($r, $sent) = CloudAuth::Upload::upload($t, '/up/503', size => 2000000,
                                           chunked => 1);
is($r->{status}, 201, 'GCS 503 mid-stream: 201');
CloudAuth::Upload::stored_ok($t, $B, '503', $sent, 'GCS 503 mid-stream');
my @s = session_requests('503');
like(shape(@s), qr{PUT\(524288-786431/\*\)=503 PUT\(\*/\*\)=308 PUT\(524288-786431/\*\)=308},
     'GCS 503: status query, then the chunk again from the Range');
my $took = time - $start;
cmp_ok($took, '>=', 0.5, 'back-off before the retry');
cmp_ok($took, '<', 5 * $tf, 'one back-off only') or diag shape(@s);
like($t->error_log,
     qr/\[info\].*stored "503" in bucket "test-bucket", 2000000 bytes in \d+ ms, 1 retries/,
     'info log line: object, bytes, duration, retries');

# resumed: 503 on the final chunk

faults(fail_after => 590000);
($r, $sent) = CloudAuth::Upload::upload($t, '/up/503-final', size => 600000);
is($r->{status}, 201, 'GCS 503 on the final chunk: 201');
CloudAuth::Upload::stored_ok($t, $B, '503-final', $sent, '503 on the final');
like(shape(session_requests('503-final')),
     qr{PUT\(524288-599999/600000\)=503 PUT\(\*/\*\)=308 PUT\(524288-599999/600000\)=200$},
     '503 on the final chunk: the final chunk again');

# resumed: the connection dropped mid-chunk

faults(drop_after => 300000);
($r, $sent) = CloudAuth::Upload::upload($t, '/up/drop', size => 1000000,
                                        chunked => 1);
is($r->{status}, 201, 'connection dropped mid-stream: 201');
CloudAuth::Upload::stored_ok($t, $B, 'drop', $sent, 'dropped connection');
like(shape(session_requests('drop')), qr{=drop PUT\(\*/\*\)=308},
     'dropped: a status query follows, not a blind resend');

# resumed: GCS stalls; the stalled chunk is given up after cloudauth_timeout

faults(stall_after => 300000, stall => 10);
$start = time;
($r, $sent) = CloudAuth::Upload::upload($t, '/up/stall', size => 1000000,
                                        chunked => 1);
is($r->{status}, 201, 'GCS stalls mid-stream: 201');
CloudAuth::Upload::stored_ok($t, $B, 'stall', $sent, 'stall');
$took = time - $start;
cmp_ok($took, '<', 7 * $tf, 'the stalled chunk was given up after about 2 s')
    or diag shape(session_requests('stall'));

# resumed: GCS keeps fewer bytes than it was sent

faults(short => 1);
($r, $sent) = CloudAuth::Upload::upload($t, '/big/short', size => 3500000,
                                        chunked => 1);
is($r->{status}, 201, 'GCS keeps less than a chunk: 201');
CloudAuth::Upload::stored_ok($t, $B, 'short', $sent, 'short chunks');
like(shape(session_requests('short')),
     qr{^PUT\(0-1048575/\*\)=308 PUT\(786432-},
     'the next chunk starts where GCS\'s Range ends');

# resumed: GCS takes a chunk and keeps none of it (308, same Range)

faults(zero_after => 300000);
($r, $sent) = CloudAuth::Upload::upload($t, '/up/zero', size => 1000000,
                                        chunked => 1);
is($r->{status}, 201, 'GCS keeps nothing of a chunk: 201');
CloudAuth::Upload::stored_ok($t, $B, 'zero', $sent, 'nothing kept');
like(shape(session_requests('zero')),
     qr{PUT\(262144-524287/\*\)=308 PUT\(\*/\*\)=308 PUT\(262144-524287/\*\)=308},
     'no progress: a back-off and a status query, not a tight loop');

# resumed: the session start fails twice

faults(init_status => 503, init_times => 2);
($r, $sent) = CloudAuth::Upload::upload($t, '/up/init', size => 1000);
is($r->{status}, 201, 'session start fails twice: 201');
CloudAuth::Upload::stored_ok($t, $B, 'init', $sent, 'session start retried');
is(scalar(grep { $_->{uri} =~ /name=init&/ }
          CloudAuth::FakeGCS->requests($t)), 3, 'three session starts');

# resumed: GCS refuses the token mid-stream (revoked, lapsed): a new one

my $tokens = $t->token_count;
faults(fail_after => 524288, fail_status => 401);
($r, $sent) = CloudAuth::Upload::upload($t, '/up/401', size => 1000000,
                                        chunked => 1);
is($r->{status}, 201, 'GCS 401 mid-stream: 201');
CloudAuth::Upload::stored_ok($t, $B, '401', $sent, '401 mid-stream');
is($t->token_count, $tokens + 1, '401: a new token was fetched');
like(shape(session_requests('401')), qr{=401 PUT\(524288-786431/\*\)=308},
     '401: the chunk again, with the new token');

# failed: 429 forever would take 60 s; a 400 on a chunk fails at once

faults(fail_after => 300000, fail_status => 400);
($r) = CloudAuth::Upload::upload($t, '/up/400', size => 1000000,
                                 chunked => 1);
is($r->{status}, 502, 'GCS 400 on a chunk: 502');
is($r->{json}{error}{message}, 'GCS refused a chunk (HTTP 400)',
   '502 with our reason and GCS\'s status');
like($t->error_log, qr/"400" failed \(502\): .*; GCS said: injected failure/,
     'GCS\'s message in the error log');

# failed: the session is gone

faults(session_404 => 1);
($r) = CloudAuth::Upload::upload($t, '/up/gone', size => 1000000,
                                 chunked => 1);
is($r->{status}, 502, 'session 404: 502');
like($r->{json}{error}{message}, qr/session is gone/, 'session 404: reason');
ok(!CloudAuth::FakeGCS->object($t, $B, 'gone'), 'session 404: nothing');

# failed: GCS stored other bytes (its hash check refuses the final chunk)

faults(corrupt => 1);
($r) = CloudAuth::Upload::upload($t, '/up/corrupt', size => 700000);
is($r->{status}, 502, 'GCS got other bytes: 502');
is($r->{json}{error}{message}, 'GCS refused a chunk (HTTP 400)',
   'the hash mismatch: GCS refused the final chunk');
like($t->error_log, qr/"corrupt" failed .*GCS said: Provided CRC32C .* doesn't match/,
     'the hash mismatch is logged');
ok(!CloudAuth::FakeGCS->object($t, $B, 'corrupt'), 'corrupt: not stored');

faults();

# the client goes away mid-stream: session cancelled, nothing stored

($r, $sent) = CloudAuth::Upload::upload($t, '/up/abort', size => 2000000,
                                        chunked => 1, abort_after => 700000);
ok($t->wait_for(sub { ((session_of('abort') // {})->{state} // '') eq 'cancelled' }),
   'client abort: the session is cancelled (DELETE)');
ok(!CloudAuth::FakeGCS->object($t, $B, 'abort'), 'client abort: nothing');
ok($t->wait_for(sub { $t->error_log =~ /"abort".*client closed the conn/ }),
   'client abort: logged as such');

faults(delay => 1);
($r, $sent) = CloudAuth::Upload::upload($t, '/up/abort2', size => 2000000,
                                        abort_after => 800000);
ok($t->wait_for(sub { ((session_of('abort2') // {})->{state} // '') eq 'cancelled' }),
   'client abort while GCS is slow: the session is cancelled');
faults();

# the client stops sending: client_body_timeout, session cancelled

($r) = CloudAuth::Upload::upload($t, '/slow/stuck', size => 2000000,
                                 chunked => 1, abort_after => 600000,
                                 before_close => sub { sleep 2.5 });
ok($t->wait_for(sub {
       ((session_of('stuck') // {})->{state} // '') eq 'cancelled' }),
   'client stops sending: the session is cancelled after client_body_timeout');
ok(!CloudAuth::FakeGCS->object($t, $B, 'stuck'), 'client stops: nothing');

# no token

$start = time;
($r) = CloudAuth::Upload::upload($t, '/broken/x', size => 1000);
is($r->{status}, 502, 'no token: 502');
like($r->{json}{error}{message} // '', qr/token/i, 'no token: the reason');
cmp_ok(time - $start, '<', 5 * $tf, 'no token: answered in time');

# still serving; every session ended

($r, $sent) = CloudAuth::Upload::upload($t, '/up/after', size => 300000);
is($r->{status}, 201, 'uploads work after all that');
CloudAuth::Upload::stored_ok($t, $B, 'after', $sent, 'after');

ok($t->wait_for(sub {
       !grep { $_->{state} eq 'open' && $_->{name} ne 'gone' }
       CloudAuth::FakeGCS->sessions($t)
   }), 'no session left open (but the one GCS said was gone)')
    or diag join ' ', map { "$_->{name}:$_->{state}" }
                      CloudAuth::FakeGCS->sessions($t);

# the upload counters of cloudauth_status

my $st;
$t->wait_for(sub {
    $st = eval { JSON::PP->new->decode($t->http_get('/status')->{body}) };
    $st && $st->{uploads}{active} == 0;
});
is_deeply($st->{uploads}, { active => 0, completed => 9, failed => 7,
                            bytes => 10401000 },
          'status: uploads active, completed, failed, bytes');

# the fake is as strict as GCS (curl straight at it)

my ($token) = $t->issued_tokens;
my $curl = "curl -s --cacert " . $t->dir . "/ca.crt -o /dev/null"
         . " -w '%{http_code}'";

sub gcs_session {
    my $out = `$curl -D - -X POST -H 'Authorization: Bearer $token' -H 'Content-Length: 0' '$gcs/upload/storage/v1/b/$B/o?uploadType=resumable&name=strict'`;
    my ($loc) = $out =~ /^Location: (\S+)/mi;
    return $loc;
}

sub gcs_put {
    my ($loc, $range, $len, @h) = @_;
    my $f = $t->write_file('strict.bin', 'x' x $len);
    my $h = join ' ', map { "-H '$_'" } "Content-Range: $range", @h;
    return `$curl -X PUT $h --data-binary \@$f '$loc'`;
}

my $loc = gcs_session();
ok($loc, 'fake: session');
is(`$curl -X POST -H 'Content-Length: 0' '$gcs/upload/storage/v1/b/$B/o?uploadType=resumable&name=strict'`,
   401, 'fake: no token, 401');
is(gcs_put($loc, 'bytes 0-99/*', 100), 400,
   'fake: a non-final chunk not a multiple of 256 KiB, 400');
is(gcs_put($loc, 'bytes 262144-524287/*', 262144), 400,
   'fake: a chunk not at the stored end, 400');
is(gcs_put($loc, 'bytes 0-262143/*', 262144), 308, 'fake: a chunk, 308');
is(gcs_put($loc, 'bytes 262144-262153/262154', 10, 'X-Goog-Hash: crc32c=AAAAAA=='),
   400, 'fake: a wrong X-Goog-Hash, 400');
is(gcs_put($loc, 'bytes 262144-262153/262154', 10), 200, 'fake: final, 200');

$t->stop;

my $log = $t->read_file('upload.log');
like($log, qr{^/up/abort 400 aborted \d+$}m, 'log: aborted');
like($log, qr{^/slow/stuck 408 aborted \d+$}m, 'log: timed out');
like($log, qr{^/up/503 201 stored 2000000$}m, 'log: stored after a retry');
is(join(', ', $t->leaks($log)), '', 'no token in the logs');

$t->check_log_ok;

done_testing;
