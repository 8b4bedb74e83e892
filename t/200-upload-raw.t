#!/usr/bin/perl

# cloudauth_gcs_upload, raw bodies: sizes around the chunk and 256 KiB
# boundaries, known length and chunked, HTTP/1.1 and HTTP/2, the answer's
# JSON, content types, object names (template, escaping, GCS's rules),
# overwrite=off/on, max_size, Content-MD5, methods, CORS and the log
# variables.  Every stored object is compared with what was sent.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX ();
use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

my $B = 'test-bucket';

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    log_format upload '$request_method $uri $status '
                      '$cloudauth_upload_status $cloudauth_upload_bytes '
                      '"$cloudauth_upload_object"';

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT_H2%% %%HTTP2%%;
        %%HTTP2_ON%%

        client_max_body_size 20m;

        location /upload/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%/
                cors=https://app.example,https://other.example;
            access_log %%TESTDIR%%/upload.log upload;
        }

        location /small/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                max_size=1m endpoint=https://127.0.0.1:%%PORT_GCS%%;
            access_log %%TESTDIR%%/upload.log upload;
        }

        location /chunks/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /over/ {
            cloudauth_gcs_upload google bucket=test-bucket overwrite=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /tmpl/ {
            cloudauth_gcs_upload google bucket=test-bucket
                object=in/$http_x_dir/$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /name/ {
            cloudauth_gcs_upload google bucket=test-bucket
                object=$http_x_name
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
            access_log %%TESTDIR%%/upload.log upload;
        }

        location /nomd5/ {
            cloudauth_gcs_upload google bucket=test-bucket md5=off
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /md5/ {
            cloudauth_gcs_upload google bucket=test-bucket md5=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /nobucket/ {
            cloudauth_gcs_upload google bucket=no-such-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

sub nreq { scalar(my @r = CloudAuth::FakeGCS->requests($t)) }

sub requests_for {
    my ($name) = @_;
    my @all = CloudAuth::FakeGCS->requests($t);
    my ($init) = grep { $_->{method} eq 'POST'
                        && $_->{uri} =~ /[?&]name=\Q$name\E(&|$)/ } @all;
    return () unless $init;
    my @r = ($init);
    # the session's requests follow on the same connection or another;
    # they are the ones after the start, up to the final answer
    my $seen = 0;
    for my $r (@all) {
        $seen ||= $r == $init;
        next unless $seen && $r != $init;
        last if $r->{method} eq 'POST';
        push @r, $r;
    }
    return @r;
}

# sizes: empty, 1 byte, 256 KiB, 8 MiB (the default chunk) - 1, + 0, + 1

my $M8 = 8 * 1024 * 1024;

for my $case ([0, 0], [1, 0], [262144, 0], [$M8 - 1, 0], [$M8, 0],
              [$M8 + 1, 0], [0, 1], [1, 1], [$M8 + 1, 1])
{
    my ($size, $chunked) = @$case;
    my $name = "size-$size" . ($chunked ? '-chunked' : '');
    my $what = "$size bytes" . ($chunked ? ' chunked' : '');

    my ($r, $sent) = CloudAuth::Upload::upload($t, "/upload/$name",
                                               size => $size,
                                               chunked => $chunked);
    is($r->{status}, 201, "$what: 201") or diag $r->{body};

    my $j = $r->{json} || {};
    is($j->{name}, $name, "$what: name");
    is($j->{size}, $size, "$what: size");
    is($j->{crc32c}, CloudAuth::Upload::crc32c_b64($sent->{crc32c}),
       "$what: crc32c");
    CloudAuth::Upload::stored_ok($t, $B, $name, $sent, $what);
}

# the shape of what went to GCS for 8 MiB + 1 of known length

my @req = requests_for("size-" . ($M8 + 1));
is(join(' ', map { "$_->{method}:" . ($_->{content_range} // '-') }
             @req[0 .. 2]),
   'POST:- PUT:bytes 0-8388607/* PUT:bytes 8388608-8388608/8388609',
   '8 MiB + 1: a session, a full chunk, a final byte');
like($req[2]{hash} // '', qr{^crc32c=[A-Za-z0-9+/]{6}==$},
     'X-Goog-Hash on the final chunk: CRC32C (md5= is off by default)');
ok(!defined $req[1]{hash}, 'no X-Goog-Hash on a non-final chunk');

@req = requests_for('size-0');
is($req[1]{content_range}, 'bytes */0', 'empty body: bytes */0');

# the answer

my $data = CloudAuth::Upload::pattern(1000);
my ($r, $sent) = CloudAuth::Upload::put($t, '/upload/dir/answer.txt', $data,
                                        headers => {
                                            'Content-Type' => 'text/plain' });
is($r->{status}, 201, 'answer: 201');
like($r->{headers}{'content-type'}, qr{^application/json}, 'JSON');
my $j = $r->{json};
is($j->{bucket}, $B, 'bucket');
is($j->{name}, 'dir/answer.txt', 'name: the URI below the location');
is($j->{size}, 1000, 'size');
is($j->{contentType}, 'text/plain', 'contentType: the request\'s');
is($j->{md5Hash}, $sent->{md5}, 'md5Hash');
like($j->{generation}, qr/^\d+$/, 'generation');
is($j->{url}, "https://storage.googleapis.com/$B/dir/answer.txt", 'url');
is(CloudAuth::FakeGCS->object($t, $B, 'dir/answer.txt')->{meta}{contentType},
   'text/plain', 'stored with the request\'s content type');

($r) = CloudAuth::Upload::put($t, '/upload/post.bin', 'x', method => 'POST');
is($r->{status}, 201, 'POST of a raw body');
is($r->{json}{contentType}, 'application/octet-stream',
   'no Content-Type: application/octet-stream');

# HTTP/2 (curl)

SKIP: {
    skip 'no curl', 4 unless -x '/usr/bin/curl';

    my $file = $t->write_file('h2.bin', CloudAuth::Upload::pattern(300000));
    my $out = `curl -s --http2-prior-knowledge -T $file -w '\\n%{http_version} %{http_code}' http://127.0.0.1:${\ $t->port('h2')}/upload/h2.bin 2>&1`;
    like($out, qr/\n2 201$/, 'HTTP/2 upload: 201');
    CloudAuth::Upload::stored_ok($t, $B, 'h2.bin',
        CloudAuth::Upload::sent_of(CloudAuth::Upload::pattern(300000)),
        'HTTP/2');

    # many chunks: flow control holds the client while GCS takes them
    my $data = CloudAuth::Upload::pattern(3 * 1048576 + 5);
    $file = $t->write_file('h2big.bin', $data);
    $out = `curl -s --http2-prior-knowledge -T $file -w '\n%{http_version} %{http_code}' http://127.0.0.1:${\ $t->port('h2')}/chunks/h2big.bin 2>&1`;
    like($out, qr/\n2 201$/, 'HTTP/2 upload in 256 KiB chunks: 201');
    CloudAuth::Upload::stored_ok($t, $B, 'h2big.bin',
        CloudAuth::Upload::sent_of($data), 'HTTP/2 in chunks');
}

# concurrent uploads, in both workers

my @kids;
for my $i (1 .. 6) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my ($r) = CloudAuth::Upload::upload($t, "/chunks/par$i",
                                            size => 1048576 * $i + $i,
                                            chunked => $i % 2);
        POSIX::_exit($r->{status} == 201 ? 0 : 1);
    }
    push @kids, $pid;
}
my $bad = 0;
for (@kids) { waitpid $_, 0; $bad++ if $?; }
is($bad, 0, '6 concurrent uploads: all 201');
for my $i (1 .. 6) {
    my $d = CloudAuth::Upload::pattern(1048576 * $i + $i);
    CloudAuth::Upload::stored_ok($t, $B, "par$i",
        CloudAuth::Upload::sent_of($d), "concurrent upload $i");
}

# chunk_size=256k: chunks of 256 KiB

($r, $sent) = CloudAuth::Upload::upload($t, '/small/q', size => 786433,
                                        chunked => 1, piece => 10000);
is($r->{status}, 201, '768 KiB + 1 in 256 KiB chunks');
CloudAuth::Upload::stored_ok($t, $B, 'q', $sent, '256 KiB chunks');
is(join(' ', map { $_->{length} } grep { $_->{method} eq 'PUT' }
             requests_for('q')),
   '262144 262144 262144 1', 'three chunks of 256 KiB and the last');

# names: the template, escaping, GCS's rules

($r, $sent) = CloudAuth::Upload::put($t, '/tmpl/a/b/c%20d.txt', 'tmpl',
                                     headers => { 'X-Dir' => 'x' });
is($r->{json}{name}, 'in/x/c d.txt', 'object= template, $cloudauth_filename');
CloudAuth::Upload::stored_ok($t, $B, 'in/x/c d.txt', $sent, 'template');

($r) = CloudAuth::Upload::put($t, '/tmpl/a/..%2e%3Cx%3E$%22.txt', 'x',
                              headers => { 'X-Dir' => 'y' });
is($r->{json}{name}, 'in/y/_x___.txt', '$cloudauth_filename sanitised')
    or diag $r->{body};

my $odd = "dir/a b+c%&?#=\xc3\xbc.txt";
(my $uri = $odd) =~ s/([^A-Za-z0-9\/._-])/sprintf '%%%02X', ord $1/ge;
($r, $sent) = CloudAuth::Upload::put($t, "/upload/$uri", 'odd');
is($r->{status}, 201, 'name with reserved and UTF-8 characters');
CloudAuth::Upload::stored_ok($t, $B, $odd, $sent, 'odd name');
is($r->{json}{url}, "https://storage.googleapis.com/$B/"
                    . 'dir/a%20b%2Bc%25%26%3F%23%3D%C3%BC.txt',
   'url escaped');

for my $bad (['.', 'the object name is \\"\\.\\" or \\"\\.\\.\\"'],
             ['..', 'the object name is'],
             ['.well-known/acme-challenge/x', 'acme-challenge'],
             ['x' x 1025, 'longer than 1024'],
             ["\xff\xfe", 'not UTF-8'],
             ['', 'empty'])
{
    my ($name, $why) = @$bad;
    my $n = nreq();
    ($r) = CloudAuth::Upload::put($t, '/name/x', 'bad',
                                  headers => { 'X-Name' => $name });
    my $show = length $name > 20 ? substr($name, 0, 20) . '...' : $name;
    is($r->{status}, 400, "bad name \"$show\": 400");
    like($r->{json}{error}{message} // $r->{body}, qr/$why/,
         "bad name \"$show\": the reason");
    is(nreq(), $n,
       "bad name \"$show\": nothing sent to GCS");
}

($r) = CloudAuth::Upload::put($t, '/upload/a%0Ab', 'x');
is($r->{status}, 400, 'LF in the name: 400');
($r) = CloudAuth::Upload::put($t, '/upload/', 'x');
is($r->{status}, 400, 'empty name: 400');

# overwrite

CloudAuth::FakeGCS->put_object($t, $B, 'exists.txt', 'old');
($r) = CloudAuth::Upload::put($t, '/upload/exists.txt', 'new');
is($r->{status}, 409, 'existing object, overwrite=off: 409');
like($r->{json}{error}{message}, qr/exists/, '409: the reason');
is(CloudAuth::FakeGCS->object($t, $B, 'exists.txt')->{data}, 'old',
   'the existing object is kept');
like((requests_for('exists.txt'))[0]{uri}, qr/&ifGenerationMatch=0/,
     'ifGenerationMatch=0 sent');

($r, $sent) = CloudAuth::Upload::put($t, '/over/exists.txt', 'new');
is($r->{status}, 201, 'overwrite=on: 201');
is(CloudAuth::FakeGCS->object($t, $B, 'exists.txt')->{data}, 'new',
   'overwrite=on: replaced');

# GCS refuses: 502 with our reason; GCS's words go to the log only

($r) = CloudAuth::Upload::put($t, '/nobucket/x', 'x');
is($r->{status}, 502, 'no such bucket: 502');
is($r->{json}{error}{message}, 'GCS refused the upload (HTTP 404)',
   '502: our reason and GCS\'s status');
like($t->error_log, qr/GCS said: The specified bucket does not exist/,
     'GCS\'s message is in the error log');

# max_size

my $n = nreq();
($r) = CloudAuth::Upload::upload($t, '/small/big', size => 1048577);
is($r->{status}, 413, 'declared length over max_size: 413');
like($r->{json}{error}{message}, qr/max_size/, '413: the reason');
is(nreq(), $n,
   '413 before any GCS request');

($r, $sent) = CloudAuth::Upload::upload($t, '/small/exactly', size => 1048576,
                                        chunked => 1);
is($r->{status}, 201, 'max_size itself is allowed');

($r) = CloudAuth::Upload::upload($t, '/small/big-chunked', size => 1048577,
                                 chunked => 1);
is($r->{status}, 413, 'chunked body over max_size: 413 mid-stream');
like($r->{json}{error}{message}, qr/max_size/, 'mid-stream 413: the reason');
ok($t->wait_for(sub { grep { $_->{method} eq 'DELETE' }
                        requests_for('big-chunked') }),
   'mid-stream 413: session cancelled');
ok(!CloudAuth::FakeGCS->object($t, $B, 'big-chunked'),
   'mid-stream 413: nothing stored');

($r) = CloudAuth::Upload::upload($t, '/upload/big', size => 21 * 1048576);
is($r->{status}, 413, 'default max_size: client_max_body_size');

# Content-MD5

$data = CloudAuth::Upload::pattern(5000);
my $md5 = CloudAuth::Upload::sent_of($data)->{md5};
($r, $sent) = CloudAuth::Upload::put($t, '/upload/md5-good', $data,
                                     headers => { 'Content-MD5' => $md5 });
is($r->{status}, 201, 'right Content-MD5: 201');

($r) = CloudAuth::Upload::put($t, '/upload/md5-bad', $data . 'x',
                              headers => { 'Content-MD5' => $md5 });
is($r->{status}, 400, 'wrong Content-MD5: 400');
like($r->{json}{error}{message}, qr/Content-MD5/, 'wrong Content-MD5: reason');
ok(!CloudAuth::FakeGCS->object($t, $B, 'md5-bad'), 'nothing stored');
ok($t->wait_for(sub { grep { $_->{method} eq 'DELETE' }
                        requests_for('md5-bad') }),
   'wrong Content-MD5: session cancelled');

# md5=on: both sums go to GCS

($r, $sent) = CloudAuth::Upload::put($t, '/md5/with-md5', $data);
is($r->{status}, 201, 'md5=on: 201');
CloudAuth::Upload::stored_ok($t, $B, 'with-md5', $sent, 'md5=on');
@req = requests_for('with-md5');
like($req[-1]{hash} // '', qr{^crc32c=[A-Za-z0-9+/]{6}==,md5=\S{22}==$},
     'md5=on: X-Goog-Hash has crc32c and md5');

# md5=off: CRC32C only, unless the client sends a Content-MD5

($r, $sent) = CloudAuth::Upload::put($t, '/nomd5/plain', $data);
is($r->{status}, 201, 'md5=off: 201');
is($r->{json}{md5Hash}, $sent->{md5}, 'md5=off: md5Hash as GCS says');
CloudAuth::Upload::stored_ok($t, $B, 'plain', $sent, 'md5=off');
@req = requests_for('plain');
like($req[-1]{hash} // '', qr{^crc32c=[A-Za-z0-9+/]{6}==$},
     'md5=off: X-Goog-Hash has crc32c only');

($r) = CloudAuth::Upload::put($t, '/nomd5/off-md5-bad', $data . 'x',
                              headers => { 'Content-MD5' => $md5 });
is($r->{status}, 400, 'md5=off: a wrong Content-MD5 still fails');

($r, $sent) = CloudAuth::Upload::put($t, '/nomd5/off-md5-good', $data,
                                     headers => { 'Content-MD5' => $md5 });
is($r->{status}, 201, 'md5=off: a right Content-MD5 is stored');
@req = requests_for('off-md5-good');
like($req[-1]{hash} // '', qr{,md5=\S{22}==$},
     'md5=off with Content-MD5: X-Goog-Hash has the MD5');

($r) = CloudAuth::Upload::put($t, '/upload/md5-junk', $data,
                              headers => { 'Content-MD5' => 'junk' });
is($r->{status}, 400, 'malformed Content-MD5: 400');

# methods

$r = $t->http_get('/upload/x');
is($r->{status}, 405, 'GET: 405');
is($r->{headers}{allow}, 'PUT, POST, OPTIONS', 'Allow');
$r = $t->http_get('/upload/x', -method => 'DELETE');
is($r->{status}, 405, 'DELETE: 405');
$r = $t->http_get('/small/x', -method => 'OPTIONS');
is($r->{status}, 405, 'OPTIONS without cors=: 405');

# CORS

$r = $t->http_get('/upload/x', -method => 'OPTIONS',
                  Origin => 'https://app.example',
                  'Access-Control-Request-Method' => 'PUT',
                  'Access-Control-Request-Headers' => 'content-type, x-foo');
is($r->{status}, 204, 'preflight: 204');
is($r->{headers}{'access-control-allow-origin'}, 'https://app.example',
   'preflight: Allow-Origin');
like($r->{headers}{'access-control-allow-methods'}, qr/PUT/,
     'preflight: Allow-Methods');
is($r->{headers}{'access-control-allow-headers'}, 'content-type, x-foo',
   'preflight: Allow-Headers');
ok($r->{headers}{'access-control-max-age'}, 'preflight: Max-Age');
like($r->{headers}{vary} // '', qr/Origin/, 'preflight: Vary');

$r = $t->http_get('/upload/x', -method => 'OPTIONS',
                  Origin => 'https://evil.example',
                  'Access-Control-Request-Method' => 'PUT');
is($r->{status}, 403, 'preflight from another origin: 403');
ok(!$r->{headers}{'access-control-allow-origin'}, 'no Allow-Origin');

$r = $t->http_get('/upload/x', -method => 'OPTIONS',
                  Origin => 'https://other.example',
                  'Access-Control-Request-Method' => 'DELETE');
is($r->{status}, 403, 'preflight for DELETE: 403');

($r) = CloudAuth::Upload::put($t, '/upload/cors.txt', 'c',
                              headers => { Origin => 'https://other.example' });
is($r->{status}, 201, 'upload with Origin');
is($r->{headers}{'access-control-allow-origin'}, 'https://other.example',
   'Allow-Origin on the answer');

($r) = CloudAuth::Upload::put($t, '/upload/cors2.txt', 'c',
                              headers => { Origin => 'https://evil.example' });
is($r->{status}, 403, 'upload from another origin: 403 (t/206)');
ok(!$r->{headers}{'access-control-allow-origin'},
   'no Allow-Origin for another origin');

$r = $t->http_get('/upload/x', Origin => 'https://app.example');
is($r->{headers}{'access-control-allow-origin'}, 'https://app.example',
   'Allow-Origin on an error too');

# the log

$t->stop;

my $log = $t->read_file('upload.log');
like($log, qr{^PUT /upload/dir/answer\.txt 201 stored 1000 "dir/answer\.txt"$}m,
     'log: stored, bytes, object');
like($log, qr{^PUT /upload/md5-bad 400 failed 5001 "-"$}m, 'log: failed');
like($log, qr{^PUT /small/big 413 rejected 0 "-"$}m, 'log: rejected');
like($log, qr{^PUT /small/big-chunked 413 failed 10\d+ "-"$}m,
     'log: failed mid-stream');
like($log, qr{^PUT /name/x 400 rejected 0 "-"$}m, 'log: bad name');
like($log, qr{^GET /upload/x 405 rejected 0 "-"$}m, 'log: 405');
like($log, qr{^OPTIONS /upload/x 204 - - "-"$}m, 'log: preflight');

is(join(', ', $t->leaks($log)), '', 'no token in the logs');
is(join(', ', map { "$_->{method} $_->{uri}" } grep { !$_->{auth} }
              CloudAuth::FakeGCS->requests($t)),
   '', 'every GCS request carried the token');

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
