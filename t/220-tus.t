#!/usr/bin/perl

# cloudauth_gcs_upload ... resumable=on: tus 1.0.0 against the fake GCS.
# Discovery (OPTIONS), 412 without Tus-Resumable, creation (metadata into
# the object's name, type and metadata), HEAD, PATCH at right and wrong
# offsets, the 256 KiB rule (a PATCH that ends between two marks stores up
# to the last one and says so), the final PATCH's object headers, deferred
# length, creation with upload, termination, X-HTTP-Method-Override, CORS,
# a client that drops mid-PATCH, and the sealed IDs: altered, forged, from
# another location, expired, another key -> 404 with GCS untouched.  The
# key: cloudauth_upload_key survives a restart, the zone's own a reload.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw(encode_base64);
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $Q = 256 * 1024;
my $B = 'test-bucket';

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

$t->write_file('upload.key', join '', map { chr int rand 256 } 1 .. 32);
chmod 0600, $t->dir . '/upload.key';
$t->write_file('short.key', 'x' x 16);
$t->write_file('other.key', join '', map { chr int rand 256 } 1 .. 32);

my $conf = <<'EOF';
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;
    %%KEY%%

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    log_format upload '$request_method $uri $status '
                      '$cloudauth_upload_status $cloudauth_upload_bytes';

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT_H2%% %%HTTP2%%;
        %%HTTP2_ON%%

        client_max_body_size 20m;

        location /files/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                chunk_size=256k endpoint=https://127.0.0.1:%%PORT_GCS%%
                cors=https://app.example;
            access_log %%TESTDIR%%/upload.log upload;
        }

        location /other/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /small/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                max_size=1m endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /brief/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                expires=3s endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /plain/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        # limit_except makes a location of its own for the other methods
        location /limited/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
            limit_except GET {
                allow 127.0.0.1;
                deny all;
            }
        }

        # after the locations: the IDs' server name is taken when the
        # server is merged, not when the directive is read
        server_name localhost;
    }

    # the same location, bucket and credential in another server
    server {
        listen 127.0.0.1:%%PORT%%;

        location /files/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                chunk_size=256k endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        server_name other.example;
    }
EOF

sub config {
    my ($key) = @_;
    (my $c = $conf) =~ s/%%KEY%%/$key ? "cloudauth_upload_key $key;" : ''/e;
    return $c;
}

$t->run(config(''));

my %TUS = ('Tus-Resumable' => '1.0.0');

sub meta {
    my (%m) = @_;
    return join ',', map { "$_ " . encode_base64($m{$_}, '') } sort keys %m;
}

sub req {
    my ($method, $path, %h) = @_;
    return $t->http_get($path, -method => $method, %h);
}

# create(PATH, LENGTH or undef (deferred), %headers) -> (response, url)
sub create {
    my ($path, $len, %h) = @_;
    my %l = defined $len ? ('Upload-Length' => $len)
                         : ('Upload-Defer-Length' => 1);
    my $r = req('POST', $path, %TUS, %l, -body => '', %h);
    return ($r, $r->{headers}{location});
}

# patch(URL, OFFSET, BYTES, %headers) -> response
sub patch {
    my ($url, $off, $data, %h) = @_;
    my ($r) = CloudAuth::Upload::upload($t, $url, method => 'PATCH',
        data => $data, headers => { %TUS, 'Upload-Offset' => $off,
            'Content-Type' => 'application/offset+octet-stream', %h });
    return $r;
}

sub gcs_requests { scalar(my @r = CloudAuth::FakeGCS->requests($t)) }

###############################################################################
# discovery and preconditions

my $r = req('OPTIONS', '/files/');
is($r->{status}, 204, 'OPTIONS: 204');
is($r->{headers}{'tus-resumable'}, '1.0.0', 'OPTIONS: Tus-Resumable');
is($r->{headers}{'tus-version'}, '1.0.0', 'OPTIONS: Tus-Version');
is($r->{headers}{'tus-extension'},
   'creation,creation-with-upload,creation-defer-length,termination,'
   . 'expiration', 'OPTIONS: Tus-Extension');
is($r->{headers}{'tus-max-size'}, 20 * 1024 * 1024,
   'OPTIONS: Tus-Max-Size is client_max_body_size');
is(req('OPTIONS', '/small/')->{headers}{'tus-max-size'}, 1024 * 1024,
   'OPTIONS: Tus-Max-Size is max_size=');

my $before = gcs_requests();

$r = req('POST', '/files/', 'Upload-Length' => 10, -body => '');
is($r->{status}, 412, 'creation without Tus-Resumable: 412');
is($r->{headers}{'tus-version'}, '1.0.0', '412 names Tus-Version');

$r = req('POST', '/files/', 'Tus-Resumable' => '0.2.2',
         'Upload-Length' => 10, -body => '');
is($r->{status}, 412, 'another Tus-Resumable: 412');

is(req('HEAD', '/files/abc')->{status}, 412, 'HEAD without it: 412');
is(req('DELETE', '/files/abc')->{status}, 412, 'DELETE without it: 412');
is(patch('/files/abc', 0, 'x', 'Tus-Resumable' => [])->{status}, 412,
   'PATCH without it: 412');

$r = req('POST', '/files/', %TUS, 'Upload-Length' => 10,
         'Upload-Defer-Length' => 1, -body => '');
is($r->{status}, 400, 'Upload-Length and Upload-Defer-Length: 400');
is(req('POST', '/files/', %TUS, 'Upload-Length' => '-1', -body => '')
       ->{status}, 400, 'a negative Upload-Length: 400');
is(req('POST', '/files/', %TUS, 'Upload-Defer-Length' => 2, -body => '')
       ->{status}, 400, 'Upload-Defer-Length: 2: 400');
is(req('POST', '/small/', %TUS, 'Upload-Length' => 2 * 1024 * 1024,
       -body => '')->{status}, 413, 'Upload-Length over max_size: 413');
is(req('POST', '/files/', %TUS, 'Upload-Length' => 10,
       'Upload-Metadata' => 'filename !!!notbase64', -body => '')->{status},
   400, 'metadata that is not base64: 400');
is(req('POST', '/files/', %TUS, 'Upload-Length' => 10,
       'Upload-Metadata' => meta(filename => 'x' x 1100), -body => '')
       ->{status}, 400, 'metadata over 1024 bytes: 400');
is(req('POST', '/files/', %TUS, 'Upload-Length' => 10,
       'Upload-Metadata' => meta(filename => "a\xff"), -body => '')
       ->{status}, 400, 'metadata that is not UTF-8: 400');
is(req('POST', '/files/', %TUS, 'Upload-Length' => 10,
       'Upload-Metadata' => 'filename YQ==,filename Yg==', -body => '')
       ->{status}, 400, 'a repeated metadata key: 400');
is(gcs_requests(), $before, 'none of them reached GCS');

###############################################################################
# creation, HEAD, PATCH by 256 KiB marks, the final PATCH

my $len = 2 * $Q + 90000;
my $data = CloudAuth::Upload::pattern($len);
my $md = meta(filename => 'report 1.txt', filetype => 'text/plain',
              team => 'blue');

my $url;
($r, $url) = create('/files/in/', $len, 'Upload-Metadata' => $md);
is($r->{status}, 201, 'creation: 201');
like($url // '', qr{^/files/in/[A-Za-z0-9_-]{40,}$},
     'Location: the creation URI and a base64url ID');
like($r->{headers}{'upload-expires'} // '', qr/GMT$/, 'Upload-Expires');
is($r->{headers}{'tus-resumable'}, '1.0.0', 'Tus-Resumable on the answer');
unlike($r->{raw}, qr/upload_id/, 'the session URI is not in the answer');

$r = req('HEAD', $url, %TUS);
is($r->{status}, 200, 'HEAD: 200');
is($r->{headers}{'upload-offset'}, 0, 'HEAD: offset 0');
is($r->{headers}{'upload-length'}, $len, 'HEAD: Upload-Length');
is($r->{headers}{'upload-metadata'}, $md, 'HEAD: Upload-Metadata as given');
is($r->{headers}{'cache-control'}, 'no-store', 'HEAD: no-store');

$r = patch($url, 0, substr($data, 0, $Q + 1000));
is($r->{status}, 204, 'PATCH: 204');
is($r->{headers}{'upload-offset'}, $Q,
   'PATCH past one mark: GCS keeps the whole 256 KiB, says so');

is(req('HEAD', $url, %TUS)->{headers}{'upload-offset'}, $Q,
   'HEAD: the offset GCS holds');

$r = patch($url, 0, substr($data, 0, 1000));
is($r->{status}, 409, 'PATCH at another offset: 409');

$r = patch($url, $Q, substr($data, $Q, 1000));
is($r->{status}, 204, 'PATCH short of the next mark: 204');
is($r->{headers}{'upload-offset'}, $Q, 'and nothing of it is kept');

$r = patch($url, $Q, 'x', 'Content-Type' => 'application/octet-stream');
is($r->{status}, 415, 'PATCH of another Content-Type: 415');

$r = patch($url, $Q, substr($data, $Q) . 'extra');
is($r->{status}, 413, 'PATCH past Upload-Length: 413');

$r = patch($url, $len + 1, '');
is($r->{status}, 409, 'PATCH at an offset past Upload-Length: 409');

$r = patch($url, $Q, substr($data, $Q));
is($r->{status}, 204, 'the final PATCH: 204');
is($r->{headers}{'upload-offset'}, $len, 'Upload-Offset is the length');

my $stored = CloudAuth::FakeGCS->object($t, $B, 'in/report 1.txt');
ok($stored && $stored->{data} eq $data, 'GCS holds every byte')
    or diag(explain([map { $_->{name} } CloudAuth::FakeGCS->objects($t)]));
is($stored && $stored->{meta}{contentType}, 'text/plain',
   'filetype is the content type');
is($stored && $stored->{meta}{metadata}{team}, 'blue',
   'other metadata keys are the object\'s metadata');
is($r->{headers}{'cloudauth-object-name'}, 'in%2Freport%201.txt',
   'Cloudauth-Object-Name');
is($r->{headers}{'cloudauth-object-size'}, $len, 'Cloudauth-Object-Size');
is($r->{headers}{'cloudauth-object-crc32c'},
   CloudAuth::Upload::crc32c_b64(CloudAuth::Upload::crc32c($data)),
   'Cloudauth-Object-Crc32c is the bytes\' CRC32C');
like($r->{headers}{'cloudauth-object-generation'} // '', qr/^\d+$/,
     'Cloudauth-Object-Generation');
like($r->{headers}{'cloudauth-object-url'} // '',
     qr{^https://storage\.googleapis\.com/test-bucket/in/report%201\.txt$},
     'Cloudauth-Object-Url');

$r = req('HEAD', $url, %TUS);
is($r->{status}, 200, 'HEAD of a complete upload: 200');
is($r->{headers}{'upload-offset'}, $len, 'its offset is the length');

is(patch($url, $len, '')->{status}, 204,
   'an empty PATCH at the end of a complete upload: 204');
is(patch($url, 0, 'abc')->{status}, 409,
   'a PATCH at 0 of a complete upload: 409');

###############################################################################
# deferred length

($r, $url) = create('/files/', undef,
                    'Upload-Metadata' => meta(filename => 'later.bin'));
is($r->{status}, 201, 'deferred creation: 201');

$r = req('HEAD', $url, %TUS);
is($r->{headers}{'upload-defer-length'}, 1, 'HEAD: Upload-Defer-Length');
ok(!exists $r->{headers}{'upload-length'}, 'HEAD: no Upload-Length yet');

$data = CloudAuth::Upload::pattern(3 * $Q + 5);

$r = patch($url, 0, substr($data, 0, 2 * $Q + 100));
is($r->{headers}{'upload-offset'}, 2 * $Q, 'deferred: PATCH kept 512 KiB');

$r = patch($url, 2 * $Q, substr($data, 2 * $Q),
           'Upload-Length' => length $data);
is($r->{status}, 204, 'deferred: the PATCH with Upload-Length completes');
is($r->{headers}{'upload-offset'}, length $data, 'at the length');

$stored = CloudAuth::FakeGCS->object($t, $B, 'later.bin');
ok($stored && $stored->{data} eq $data, 'deferred: stored whole');

# max_size= holds for the upload, not each request: a deferred length
# whose chunked PATCHes go past it

($r, $url) = create('/small/', undef,
                    'Upload-Metadata' => meta(filename => 'big.bin'));
($r) = CloudAuth::Upload::upload($t, $url, method => 'PATCH', chunked => 1,
    size => 3 * $Q, headers => { %TUS, 'Upload-Offset' => 0,
        'Content-Type' => 'application/offset+octet-stream' });
is($r->{headers}{'upload-offset'} // $r->{status}, 3 * $Q,
   'deferred, max_size=1m: 768 KiB in');
($r) = CloudAuth::Upload::upload($t, $url, method => 'PATCH', chunked => 1,
    data => CloudAuth::Upload::pattern(2 * $Q), headers => { %TUS,
        'Upload-Offset' => 3 * $Q,
        'Content-Type' => 'application/offset+octet-stream' });
is($r->{status}, 413, 'a chunked PATCH that goes past max_size: 413');
is(req('HEAD', $url, %TUS)->{headers}{'upload-offset'}, 3 * $Q,
   'and GCS holds none of its bytes');

###############################################################################
# creation with upload

$data = CloudAuth::Upload::pattern(100000);

my ($cr) = CloudAuth::Upload::upload($t, '/files/', method => 'POST',
    data => $data, headers => { %TUS, 'Upload-Length' => length $data,
        'Content-Type' => 'application/offset+octet-stream',
        'Upload-Metadata' => meta(filename => 'whole.bin') });
is($cr->{status}, 201, 'creation with the whole upload: 201');
is($cr->{headers}{'upload-offset'}, length $data, 'and it is complete');
like($cr->{headers}{location} // '', qr{^/files/[\w-]+$}, 'with a Location');
CloudAuth::Upload::stored_ok($t, $B, 'whole.bin',
                             CloudAuth::Upload::sent_of($data),
                             'creation with upload');

$data = CloudAuth::Upload::pattern(2 * $Q + 3);

($cr) = CloudAuth::Upload::upload($t, '/files/', method => 'POST',
    data => substr($data, 0, $Q + 10), headers => { %TUS,
        'Upload-Length' => length $data,
        'Content-Type' => 'application/offset+octet-stream',
        'Upload-Metadata' => meta(filename => 'part.bin') });
is($cr->{status}, 201, 'creation with a part: 201');
is($cr->{headers}{'upload-offset'}, $Q, 'it keeps the first 256 KiB');
$url = $cr->{headers}{location};

$r = patch($url, $Q, substr($data, $Q));
is($r->{headers}{'upload-offset'}, length $data, 'and finishes by PATCH');
$stored = CloudAuth::FakeGCS->object($t, $B, 'part.bin');
ok($stored && $stored->{data} eq $data, 'creation with a part: whole');

($cr) = CloudAuth::Upload::upload($t, '/files/', method => 'POST',
    data => 'abc', headers => { %TUS, 'Upload-Length' => 3,
        'Content-Type' => 'text/plain',
        'Upload-Metadata' => meta(filename => 'no.bin') });
is($cr->{status}, 415, 'creation with a body of another type: 415');

###############################################################################
# termination, method override

($r, $url) = create('/files/', 1000,
                    'Upload-Metadata' => meta(filename => 'gone.bin'));
$r = req('DELETE', $url, %TUS);
is($r->{status}, 204, 'DELETE: 204');
is(req('HEAD', $url, %TUS)->{status}, 404, 'HEAD after DELETE: 404');
is(patch($url, 0, 'x' x 1000)->{status}, 404, 'PATCH after DELETE: 404');
ok(!CloudAuth::FakeGCS->object($t, $B, 'gone.bin'), 'nothing stored');

($r, $url) = create('/files/', 5,
                    'Upload-Metadata' => meta(filename => 'over.bin'));
($r) = CloudAuth::Upload::upload($t, $url, method => 'POST', data => 'hello',
    headers => { %TUS, 'X-HTTP-Method-Override' => 'PATCH',
        'Upload-Offset' => 0,
        'Content-Type' => 'application/offset+octet-stream' });
is($r->{status}, 204, 'POST with X-HTTP-Method-Override: PATCH');
is(CloudAuth::FakeGCS->object($t, $B, 'over.bin')->{data}, 'hello',
   'the override stored the bytes');

($r, $url) = create('/files/', 5,
                    'Upload-Metadata' => meta(filename => 'over2.bin'));
$r = req('POST', $url, %TUS, 'X-HTTP-Method-Override' => 'DELETE',
         -body => '');
is($r->{status}, 204, 'POST with X-HTTP-Method-Override: DELETE');
is(req('HEAD', $url, %TUS)->{status}, 404, 'and it is gone');

is(req('POST', $url, %TUS, 'X-HTTP-Method-Override' => 'GET', -body => '')
       ->{status}, 400, 'an override to GET: 400');

###############################################################################
# HTTP/2: creation, a PATCH with a body of unknown length, HEAD (curl)

{
    my $h2 = 'http://127.0.0.1:' . $t->port('h2');
    my $tus = "-H 'Tus-Resumable: 1.0.0'";
    my $c = 'curl -s --http2-prior-knowledge -o /dev/null -D -';

    my $out = `$c -X POST $tus -H 'Upload-Length: 300000' -H 'Upload-Metadata: ${\ meta(filename => 'h2.bin')}' -H 'Content-Length: 0' $h2/files/ 2>&1`;
    like($out, qr{^HTTP/2 201}m, 'HTTP/2: creation');
    my ($loc) = $out =~ /^location: (\S+)/mi;

    $data = CloudAuth::Upload::pattern(300000);
    my $file = $t->write_file('h2-tus.bin', $data);
    $out = `cat $file | $c -X PATCH $tus -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' -H 'Transfer-Encoding: chunked' --data-binary \@- $h2$loc 2>&1`;
    like($out, qr{^HTTP/2 204}m, 'HTTP/2: a PATCH of unknown length');
    like($out, qr{^upload-offset: 300000\r?$}mi, 'to the end');

    $out = `curl -s --http2-prior-knowledge -I $tus $h2$loc 2>&1`;
    like($out, qr{^HTTP/2 200}m, 'HTTP/2: HEAD');
    like($out, qr{^upload-offset: 300000\r?$}mi, 'HTTP/2: HEAD says complete');

    $stored = CloudAuth::FakeGCS->object($t, $B, 'h2.bin');
    ok($stored && $stored->{data} eq $data, 'HTTP/2: stored whole');
}

###############################################################################
# single-request uploads still work on the location

($r) = CloudAuth::Upload::upload($t, '/files/plain.bin', size => 300000);
is($r->{status}, 201, 'a plain PUT on a resumable location: 201');
is($r->{json}{name}, 'plain.bin', 'its JSON answer');

###############################################################################
# CORS and cross-site requests

$r = req('OPTIONS', '/files/', Origin => 'https://app.example',
         'Access-Control-Request-Method' => 'PATCH',
         'Access-Control-Request-Headers' => 'tus-resumable,upload-offset');
is($r->{status}, 204, 'preflight for PATCH: 204');
like($r->{headers}{'access-control-allow-methods'} // '', qr/PATCH/,
     'it allows PATCH');

($r, $url) = create('/files/', 10, Origin => 'https://app.example',
                    'Upload-Metadata' => meta(filename => 'cors.bin'));
like($r->{headers}{'access-control-expose-headers'} // '',
     qr/Location.*Upload-Offset/, 'the tus headers are exposed');
is($r->{headers}{'access-control-allow-origin'}, 'https://app.example',
   'to the listed origin');

$before = gcs_requests();
is(req('HEAD', $url, %TUS, Origin => 'https://evil.example')->{status}, 403,
   'HEAD from an unlisted origin: 403');
is(patch($url, 0, '0123456789', Origin => 'https://evil.example')->{status},
   403, 'PATCH from an unlisted origin: 403');
is(patch($url, 0, '0123456789', 'Sec-Fetch-Site' => 'cross-site')->{status},
   403, 'a cross-site PATCH: 403');
is(req('DELETE', $url, %TUS, Origin => 'null')->{status}, 403,
   'DELETE from Origin null: 403');
is(gcs_requests(), $before, 'GCS untouched by them');

###############################################################################
# the IDs: altered, forged, from another location, expired

($r, $url) = create('/files/', 10,
                    'Upload-Metadata' => meta(filename => 'sealed.bin'));
my ($id) = $url =~ m{/([^/]+)$};

$before = gcs_requests();

for my $i (0, 20, length($id) - 1) {
    my $x = $id;
    substr($x, $i, 1) = substr($x, $i, 1) eq 'A' ? 'B' : 'A';
    is(req('HEAD', "/files/$x", %TUS)->{status}, 404,
       "an ID altered at $i: 404");
}

is(req('HEAD', '/files/' . substr($id, 0, 30), %TUS)->{status}, 404,
   'a truncated ID: 404');
is(req('HEAD', '/files/' . ('A' x 200), %TUS)->{status}, 404,
   'a forged ID: 404');
is(req('HEAD', '/files/' . ('A' x 7000), %TUS)->{status}, 404,
   'an ID too long: 404');
is(req('HEAD', '/files/', %TUS)->{status}, 404, 'no ID: 404');
is(req('HEAD', "/other/$id", %TUS)->{status}, 404,
   'the ID at another location: 404');
is(patch("/other/$id", 0, '0123456789')->{status}, 404,
   'a PATCH with it there: 404');
is(req('DELETE', "/other/$id", %TUS)->{status}, 404,
   'a DELETE with it there: 404');
is(req('HEAD', "/files/$id?x=1", %TUS)->{status}, 404,
   'the ID with arguments: 404');
is(req('HEAD', "/files/$id", %TUS, Host => 'other.example')->{status}, 404,
   'the ID at the same location of another server: 404');
is(gcs_requests(), $before, 'GCS untouched by any of them');

is(req('HEAD', $url, %TUS)->{status}, 200, 'the ID itself still works');

my ($lr, $lurl) = create('/limited/', 10,
                         'Upload-Metadata' => meta(filename => 'lim.bin'));
is($lr->{status}, 201, 'a creation under limit_except: 201');
is(patch($lurl, 0, '0123456789')->{status}, 204,
   'its PATCH under limit_except: 204');

my ($br, $burl) = create('/brief/', 10,
                         'Upload-Metadata' => meta(filename => 'brief.bin'));
is(req('HEAD', $burl, %TUS)->{status}, 200, 'expires=3s: works at once');

# the expiry is a time: waiting it out is the test (3 s, in whole seconds
# of the creation time, + a margin)
sleep 4.1;
is(req('HEAD', $burl, %TUS)->{status}, 404, 'expires=3s: 404 after it');

###############################################################################
# a client that drops mid-PATCH: GCS keeps the whole blocks it got

$data = CloudAuth::Upload::pattern(6 * $Q + 12345);
($r, $url) = create('/files/', length $data,
                    'Upload-Metadata' => meta(filename => 'cut.bin'));

CloudAuth::Upload::upload($t, $url, method => 'PATCH', data => $data,
    abort_after => 4 * $Q + 1000, piece => 16384,
    headers => { %TUS, 'Upload-Offset' => 0,
                 'Content-Type' => 'application/offset+octet-stream' });

my $held;
$t->wait_for(sub {
    $t->error_log =~ /the client of "cut\.bin" went away; GCS holds (\d+)/
        and $held = $1;
}, 10);

ok(defined $held, 'the cut PATCH ended, logged with what GCS holds');

$r = req('HEAD', $url, %TUS);
my $off = $r->{headers}{'upload-offset'} // -1;
ok($off > 0 && $off % $Q == 0, "after the cut GCS holds whole blocks ($off)");
is($off, $held, 'HEAD says what the log said');

$r = patch($url, $off, substr($data, $off));
is($r->{status}, 204, 'the resumed PATCH completes');
$stored = CloudAuth::FakeGCS->object($t, $B, 'cut.bin');
ok($stored && $stored->{data} eq $data, 'resumed: every byte is right');

###############################################################################
# two PATCHes at once on one upload (GCS answers each chunk a second late):
# both start at GCS's offset, the one whose chunk comes second finds GCS
# holding other bytes (a 400, then a query): 409, never a 502, and the
# session stays

$data = CloudAuth::Upload::pattern(4 * $Q);
($r, $url) = create('/files/', length $data,
                    'Upload-Metadata' => meta(filename => 'race.bin'));
$t->write_file('gcs_faults.json', '{"slow": 1}');

my @kids;
for my $k (1, 2) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        select undef, undef, undef, 0.3 if $k == 2;
        my $res = patch($url, 0, substr($data, 0, 2 * $Q));
        POSIX::_exit($res->{status} == 204 ? 4 : $res->{status} == 409 ? 9
                                                                      : 1);
    }
    push @kids, $pid;
}
my @codes = map { waitpid($_, 0); $? >> 8 } @kids;
$t->write_file('gcs_faults.json', '{}');

is(join(' ', sort @codes), '4 9',
   'two PATCHes racing from offset 0: one 204, one 409');

$off = req('HEAD', $url, %TUS)->{headers}{'upload-offset'} // -1;
is($off, 2 * $Q, 'GCS holds the first one\'s bytes');
$r = patch($url, $off, substr($data, $off));
is($r->{status}, 204, 'the session stayed: the upload completes');
$stored = CloudAuth::FakeGCS->object($t, $B, 'race.bin');
ok($stored && $stored->{data} eq $data, 'and is whole');

# a 400 on a chunk whose query GCS refuses too: 502, and the next PATCH
# that finishes the upload is not taken for another request's (a 409)

$data = CloudAuth::Upload::pattern(2 * $Q);
($r, $url) = create('/files/', length $data,
                    'Upload-Metadata' => meta(filename => 'probe.bin'));
CloudAuth::FakeGCS->faults($t, fail_after => 0, fail_status => 400,
                           query_status => 403);
is(patch($url, 0, $data)->{status}, 502,
   'a 400 on a chunk, a 403 on its query: 502');
CloudAuth::FakeGCS->faults($t);
$r = patch($url, 0, $data);
is($r->{status}, 204, 'the next PATCH completes the upload');
$stored = CloudAuth::FakeGCS->object($t, $B, 'probe.bin');
ok($stored && $stored->{data} eq $data, 'and it is whole');

###############################################################################
# the key: the zone's survives a reload, not a restart; a key file both

($r, $url) = create('/files/', 10,
                    'Upload-Metadata' => meta(filename => 'reload.bin'));
ok($t->reload, 'reloaded');
is(req('HEAD', $url, %TUS)->{status}, 200, 'the zone key survives reload');

$t->stop;
$t->run;
is(req('HEAD', $url, %TUS)->{status}, 404,
   'the zone key does not survive a restart');

my ($rc, $out) = $t->nginx_t(config('%%TESTDIR%%/short.key'));
isnt($rc, 0, 'a 16-byte key file fails nginx -t');
like($out, qr/cloudauth_upload_key .*short\.key.*32 or more random bytes.*openssl rand/,
     'naming the file, the need and the fix');

$t->stop;
$t->run(config('%%TESTDIR%%/upload.key'));
($r, $url) = create('/files/', 10,
                    'Upload-Metadata' => meta(filename => 'keyed.bin'));
$t->stop;
$t->run;
is(req('HEAD', $url, %TUS)->{status}, 200,
   'with cloudauth_upload_key the ID survives a restart');
is(patch($url, 0, '0123456789')->{status}, 204, 'and completes');

$t->stop;
$t->run(config('%%TESTDIR%%/other.key'));
is(req('HEAD', $url, %TUS)->{status}, 404, 'another key: 404');

# the same key, but endpoint= moved to another origin: the session URI in
# the ID is refused (not sent there), one clean 404

($r, $url) = create('/files/', 10,
                    'Upload-Metadata' => meta(filename => 'moved.bin'));
(my $moved = config('%%TESTDIR%%/other.key'))
    =~ s{(location /files/ \{.*?endpoint=https://)127\.0\.0\.1}{${1}localhost}s;
$t->stop;
$t->run($moved);
is(req('HEAD', $url, %TUS)->{status}, 404,
   'HEAD with a session on another origin than endpoint=: 404');
is(req('DELETE', $url, %TUS)->{status}, 404, 'DELETE: 404');
unlike($t->error_log, qr/header already sent/, 'answered once');

###############################################################################
# no secret in the logs

$t->stop;
unlike($t->error_log, qr/upload_id=/, 'no session URI in the error log');
unlike($t->read_file('upload.log') . $t->access_log, qr/upload_id=/,
       'nor in the access logs');
like($t->read_file('upload.log'), qr/^PATCH \S+ 204 partial \d+$/m,
     '$cloudauth_upload_status of a partial PATCH: partial');

done_testing;
