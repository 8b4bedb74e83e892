#!/usr/bin/perl

# cloudauth_gcs_upload without chunk_size=: a body of a known length goes to
# GCS as one request up to its last 256 KiB mark, pulled by curl from
# nginx's buffers as the client sends it, and the rest with the hashes in
# the final request.  What it survives: GCS keeping fewer bytes than it was
# sent (a short 308, a failure answered after the body) within the last
# 2 MiB kept for that, a client that pauses longer than cloudauth_timeout;
# what it does not: GCS losing bytes further back (a single request: 502,
# the session cancelled; tus: 502, the client asks the offset and sends
# the rest).  A client gone: the session cancelled (tus: kept).  A chunked
# body keeps chunk_size's chunks.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 ();
use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $Q = 256 * 1024;
my $B = 'test-bucket';

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 2s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    log_format upload '$request_method $uri $status $cloudauth_upload_status '
                      '$cloudauth_upload_bytes';

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT_H2%% http2;
        client_max_body_size 20m;
        access_log %%TESTDIR%%/upload.log upload;

        location /up/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /files/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
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
    } session_requests(@_);
}

sub put_ok {
    my ($name, $size, $want, $what, %o) = @_;
    my ($r, $sent) = CloudAuth::Upload::upload($t, "/up/$name",
                                               size => $size, %o);
    is($r->{status}, 201, "$what: 201") or diag explain $r;
    CloudAuth::Upload::stored_ok($t, $B, $name, $sent, $what);
    is(shape($name), $want, "$what: the requests to GCS");
}

###############################################################################
# the requests

put_ok('s1', 3 * 1048576 + 1000,
       'PUT(0-3145727/*)=308 PUT(3145728-3146727/3146728)=200',
       'one request up to the last mark, the rest with the hashes');

put_ok('s2', 2 * 1048576, 'PUT(0-2097151/*)=308 PUT(*/2097152)=200',
       'a multiple of 256 KiB: an empty final request');

put_ok('s3', 100000, 'PUT(0-99999/100000)=200',
       'less than 256 KiB: the final request only');

put_ok('s4', 1000000, 'PUT(0-999999/1000000)=200',
       'chunked: chunks of chunk_size (8 MiB)', chunked => 1);

# HTTP/2: the body's DATA frames, read inside curl's callback too

SKIP: {
    skip 'curl without HTTP/2', 3
        unless `curl -V 2>/dev/null` =~ /\bHTTP2\b/;

    my $data = CloudAuth::Upload::pattern(5 * 1048576 + 3);
    my $file = $t->write_file('h2.bin', $data);
    my $out = `curl -s --http2-prior-knowledge -T $file -w '\n%{http_version} %{http_code}' http://127.0.0.1:${\ $t->port('h2')}/up/h2.bin 2>&1`;
    like($out, qr/\n2 201$/, 'HTTP/2: 201');
    CloudAuth::Upload::stored_ok($t, $B, 'h2.bin',
                                 CloudAuth::Upload::sent_of($data), 'HTTP/2');
    is(shape('h2.bin'), 'PUT(0-5242879/*)=308 PUT(5242880-5242882/5242883)=200',
       'HTTP/2: one request and the final one');
}

# a client that pauses longer than cloudauth_timeout: no stall of GCS's

my $slept = 0;
put_ok('pause', 3000000, 'PUT(0-2883583/*)=308 PUT(2883584-2999999/3000000)=200',
       'the client pauses 3 s mid-body',
       during => sub { if ($_[0] >= 1048576 && !$slept++) { sleep 3 } });
unlike($t->error_log, qr/retrying/, 'the pause: no retry');

###############################################################################
# failures GCS answers: within the kept bytes, resumed

faults(fail_after => 5000000);
put_ok('fail-late', 6 * 1048576 + 500,
       'PUT(0-6291455/*)=503 PUT(*/*)=308 PUT(4980736-6291955/6291956)=200',
       '503 after the body, GCS holding all but the last 1.3 MiB');

faults(short => 1);
put_ok('short', 4 * 1048576 + 10,
       'PUT(0-4194303/*)=308 PUT(3932160-4194313/4194314)=200',
       'GCS kept 256 KiB less than it was sent');

faults(zero_after => 10);
put_ok('zero', 1572864 + 100,
       'PUT(0-1572863/*)=308 PUT(*/*)=308 PUT(0-1572963/1572964)=200',
       'GCS kept nothing of a request of less than 2 MiB');

# beyond them: a single request fails, its session cancelled

faults(fail_after => 1000000);
my ($r) = CloudAuth::Upload::upload($t, '/up/fail-early',
                                    size => 6 * 1048576);
is($r->{status}, 502, 'GCS lost 5 MiB of a request: 502');
like($r->{json}{error}{message} // '', qr/lost bytes/, '502: the reason');
ok($t->wait_for(sub {
       ((session_of('fail-early') // {})->{state} // '') eq 'cancelled' }),
   '502: the session is cancelled');
ok(!CloudAuth::FakeGCS->object($t, $B, 'fail-early'), '502: nothing stored');

faults(drop_after => 700000);
($r) = CloudAuth::Upload::upload($t, '/up/drop', size => 5 * 1048576);
is($r->{status}, 502, 'the connection dropped, GCS lost bytes: 502');
ok($t->wait_for(sub {
       ((session_of('drop') // {})->{state} // '') eq 'cancelled' }),
   'dropped: the session is cancelled');
faults();

# the client goes away mid-body: the session cancelled

CloudAuth::Upload::upload($t, '/up/gone', size => 6 * 1048576,
                          abort_after => 3000000);
ok($t->wait_for(sub {
       ((session_of('gone') // {})->{state} // '') eq 'cancelled' }),
   'client gone: the session is cancelled');
ok(!CloudAuth::FakeGCS->object($t, $B, 'gone'), 'client gone: nothing');
ok($t->wait_for(sub { $t->read_file('upload.log') =~ m{/up/gone \d+ aborted} }),
   'client gone: aborted');

###############################################################################
# tus

my %TUS = ('Tus-Resumable' => '1.0.0');

sub create {
    my ($len, $name) = @_;
    my $r = $t->http_get('/files/', -method => 'POST', %TUS,
                         'Upload-Length' => $len,
                         'Upload-Metadata' => 'filename '
                             . MIME::Base64::encode_base64($name, ''),
                         -body => '');
    return $r->{headers}{location};
}

sub patch {
    my ($url, $off, $data, %o) = @_;
    my ($r) = CloudAuth::Upload::upload($t, $url, method => 'PATCH',
        data => $data, headers => { %TUS, 'Upload-Offset' => $off,
            'Content-Type' => 'application/offset+octet-stream' }, %o);
    return $r;
}

sub offset_of {
    my ($url) = @_;
    return $t->http_get($url, -method => 'HEAD', %TUS)
        ->{headers}{'upload-offset'};
}

my $len = 6 * 1048576 + 500;
my $data = CloudAuth::Upload::pattern($len);

my $url = create($len, 't1');
$r = patch($url, 0, $data);
is($r->{status}, 204, 'tus: one PATCH, 204');
is($r->{headers}{'upload-offset'}, $len, 'tus: the whole length');
CloudAuth::Upload::stored_ok($t, $B, 't1',
                             CloudAuth::Upload::sent_of($data), 'tus');
is(shape('t1'),
   'PUT(*/*)=308 PUT(0-6291455/*)=308 PUT(6291456-6291955/6291956)=200',
   'tus: the query, one request, the final one');

# 8 MiB PATCHes (and a last one): one request each

$len = 3 * 1048576 + 7;
$data = CloudAuth::Upload::pattern($len);
$url = create($len, 't2');
is(patch($url, 0, substr($data, 0, 1048576))->{status}, 204, 'tus: PATCH 1');
is(patch($url, 1048576, substr($data, 1048576, 1048576 + 100))
       ->{headers}{'upload-offset'}, 2097152,
   'tus: a PATCH ending between two marks: up to the last one');
$r = patch($url, 2097152, substr($data, 2097152));
is($r->{status}, 204, 'tus: the last PATCH');
CloudAuth::Upload::stored_ok($t, $B, 't2',
                             CloudAuth::Upload::sent_of($data), 'tus PATCHes');

# GCS loses bytes of a PATCH: 502, the client asks and sends the rest

$len = 6 * 1048576;
$data = CloudAuth::Upload::pattern($len);
$url = create($len, 't3');
faults(fail_after => 1000000);
$r = patch($url, 0, $data);
is($r->{status}, 502, 'tus: GCS lost bytes of the PATCH: 502');
faults();
my $off = offset_of($url);
is($off, 786432, 'tus: HEAD says what GCS holds');
$r = patch($url, $off, substr($data, $off));
is($r->{status}, 204, 'tus: the rest');
CloudAuth::Upload::stored_ok($t, $B, 't3',
                             CloudAuth::Upload::sent_of($data),
                             'tus after a lost PATCH');

# the client goes mid-PATCH: the session stays, the client goes on

$url = create($len, 't4');
patch($url, 0, $data, abort_after => 3000000);
ok($t->wait_for(sub { $t->read_file('upload.log') =~ m{PATCH \S+ \d+ aborted} }),
   'tus: client gone mid-PATCH: aborted');
ok(((session_of('t4') // {})->{state} // '') ne 'cancelled',
   'tus: client gone: the session is kept');
$off = offset_of($url);
ok(defined $off && $off % $Q == 0, "tus: HEAD after the cut: $off");
$r = patch($url, $off, substr($data, $off));
is($r->{status}, 204, 'tus: the rest after the cut');
CloudAuth::Upload::stored_ok($t, $B, 't4',
                             CloudAuth::Upload::sent_of($data),
                             'tus after a cut PATCH');

$t->check_log_ok;

done_testing();
