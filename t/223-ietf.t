#!/usr/bin/perl

# cloudauth_gcs_upload ... resumable=on: "Resumable Uploads for HTTP"
# (draft-ietf-httpbis-resumable-upload) against the fake GCS, a test per
# section of the draft: creation with the whole body and with a part (the
# 104 Upload Resumption Supported before the body on HTTP/1.1, none on
# HTTP/2), offset retrieval, appends (at a wrong offset, past the length,
# of another type, to a completed upload), the 256 KiB rule, cancellation,
# the interop versions served (3, 5, 6, 8) and others refused, limits,
# problem details, naming (Upload-Metadata, Content-Disposition, object=),
# expiry, CORS, curl over HTTP/1.1 (104, then 100 Continue), and the IDs:
# forged, altered, from another location -> 404, GCS untouched.  tus and single requests on the same location are t/220's.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw(encode_base64);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use Test::More;

use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $Q = 256 * 1024;
my $B = 'test-bucket';
my $P = 'https://iana.org/assignments/http-problem-types#';

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    # a credential of its own, whose token the fake refuses (a back-off)
    cloudauth_credential down type=google_service_account
        key_file=%%KEY_FILE%%
        scopes=https://www.googleapis.com/auth/devstorage.full_control;

    log_format upload '$request_method $uri $status '
                      '$cloudauth_upload_status $cloudauth_upload_bytes';

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT_H2%% http2;

        client_max_body_size 20m;

        location /files/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                chunk_size=256k endpoint=https://127.0.0.1:%%PORT_GCS%%
                cors=https://app.example;
            access_log %%TESTDIR%%/upload.log upload;
        }

        location /down/ {
            cloudauth_gcs_upload down bucket=test-bucket resumable=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /other/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /small/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                max_size=1m expires=1h endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /named/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                object=ietf/$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /brief/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                expires=2s endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /plain/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        server_name localhost;
    }
EOF

sub meta {
    my (%m) = @_;
    return join ',', map { "$_ " . encode_base64($m{$_}, '') } sort keys %m;
}

sub req {
    my ($method, $path, %h) = @_;
    return $t->http_get($path, -method => $method, %h);
}

sub iv { ('Upload-Draft-Interop-Version' => $_[0]) }

# send(METHOD, PATH, BYTES, %headers) -> response (interim ones in it)
sub send_body {
    my ($method, $path, $data, %h) = @_;
    my ($r) = CloudAuth::Upload::upload($t, $path, method => $method,
                                        data => $data, headers => \%h);
    return $r;
}

sub append {
    my ($v, $url, $off, $data, %h) = @_;
    return send_body('PATCH', $url, $data, iv($v), 'Upload-Offset' => $off,
        'Content-Type' => 'application/partial-upload', %h);
}

sub problem {
    my ($r) = @_;
    return undef unless ($r->{headers}{'content-type'} // '')
                        eq 'application/problem+json';
    return eval { JSON::PP->new->decode($r->{body}) };
}

sub gcs_requests { scalar(my @r = CloudAuth::FakeGCS->requests($t)) }

sub stored { CloudAuth::FakeGCS->object($t, $B, $_[0]) }

###############################################################################
# discovery, and the interop versions served

my $r = req('OPTIONS', '/files/', iv(8));
is($r->{status}, 204, 'OPTIONS, interop 8: 204');
is($r->{headers}{'upload-limit'},
   'max-size=20971520, min-append-size=262144, max-age=604800',
   'OPTIONS: Upload-Limit with max-age (interop 8)');
ok(!exists $r->{headers}{'tus-resumable'}, 'no tus header on it');

$r = req('OPTIONS', '/small/', iv(6));
is($r->{headers}{'upload-limit'},
   'max-size=1048576, min-append-size=262144, expires=3600',
   'OPTIONS, interop 6: max_size= and expires (its name then)');
ok(!exists req('OPTIONS', '/files/', iv(5))->{headers}{'upload-limit'},
   'OPTIONS, interop 5: no Upload-Limit (it came in interop 6)');

my $before = gcs_requests();

for my $v (1, 2, 4, 7, 9) {
    $r = send_body('POST', '/files/', 'x' x 1000, iv($v),
                   'Upload-Complete' => '?0', 'Upload-Incomplete' => '?1');
    is($r->{status}, 400, "interop $v: 400");
    my $p = problem($r);
    like($p && $p->{detail} // '', qr/not served here: 3, 5, 6 and 8 are/,
         "interop $v: problem details name the versions served");
}

$r = send_body('POST', '/files/', 'x' x 1000, iv('x'),
               'Upload-Complete' => '?0');
is($r->{status}, 400, 'interop "x": 400');
like(problem($r) && problem($r)->{detail} // '',
     qr/not a number: 3, 5, 6 and 8 are served/, 'interop "x": the reason');

$r = send_body('POST', '/files/', 'x' x 1000, 'Upload-Complete' => '?0');
is($r->{status}, 400, 'a part without an interop version: 400');
like(problem($r) && problem($r)->{detail} // '',
     qr/Upload-Draft-Interop-Version/, 'it names the header');

is(send_body('POST', '/files/', 'x' x 1000, iv(8))->{status}, 400,
   'a creation that does not say whether it is complete: 400');
is(gcs_requests(), $before, 'none of them reached GCS');
ok(!grep({ $_->{name} =~ /^files/ } CloudAuth::FakeGCS->objects($t)),
   'nothing stored');

# on a location without resumable=on a part is refused as before

$r = send_body('POST', '/plain/p.bin', 'x' x 1000, iv(8),
               'Upload-Complete' => '?0');
is($r->{status}, 501, 'a part on a location without resumable=on: 501');

###############################################################################
# creation with the whole body (interop 8): 104, then the object

my $data = CloudAuth::Upload::pattern(3 * $Q + 1234);

$r = send_body('POST', '/files/in/', $data, iv(8), 'Upload-Complete' => '?1',
               'Upload-Metadata' => meta(filename => 'whole 1.bin',
                                         filetype => 'text/plain'));
is($r->{status}, 201, 'creation, complete: 201');
my ($i) = @{ $r->{interim} };
is($i && $i->{status}, 104, 'a 104 before it (HTTP/1.1)');
like($i && $i->{headers}{location} // '',
     qr{^/files/in/[A-Za-z0-9_-]{40,}$}, '104: the upload\'s URL');
is($i && $i->{headers}{'upload-draft-interop-version'}, 8,
   '104: Upload-Draft-Interop-Version');
like($i && $i->{headers}{'upload-limit'} // '', qr/min-append-size=262144/,
     '104: Upload-Limit');
is($r->{headers}{location}, $i && $i->{headers}{location},
   'the answer\'s Location is the 104\'s');
is($r->{headers}{'upload-complete'}, '?1', 'Upload-Complete: ?1');
is($r->{headers}{'upload-offset'}, length $data, 'Upload-Offset: all of it');
is($r->{json} && $r->{json}{name}, 'in/whole 1.bin',
   'the answer is the single upload\'s JSON');
is($r->{json} && $r->{json}{crc32c},
   CloudAuth::Upload::crc32c_b64(CloudAuth::Upload::crc32c($data)),
   'its CRC32C is the bytes\'');
my $s = stored('in/whole 1.bin');
ok($s && $s->{data} eq $data, 'GCS holds every byte');
is($s && $s->{meta}{contentType}, 'text/plain', 'filetype is the type');

###############################################################################
# creation with a part (interop 6), offset retrieval, appends

$data = CloudAuth::Upload::pattern(3 * $Q + 777);
my $len = length $data;

$r = send_body('POST', '/files/', substr($data, 0, $Q + 1000), iv(6),
               'Upload-Complete' => '?0', 'Upload-Length' => $len,
               'Content-Type' => 'application/partial-upload',
               'Upload-Metadata' => meta(filename => 'parts.bin'));
is($r->{status}, 201, 'creation, a part: 201');
my $url = $r->{headers}{location};
like($url // '', qr{^/files/[A-Za-z0-9_-]{40,}$}, 'Location: its URL');
is($r->{interim}[0] && $r->{interim}[0]{headers}{location}, $url,
   'the 104 had it before the body');
is($r->{headers}{'upload-complete'}, '?0', 'Upload-Complete: ?0');
is($r->{headers}{'upload-offset'}, $Q,
   'Upload-Offset: up to the last 256 KiB mark, the rest to send again');
like($r->{headers}{'upload-limit'} // '', qr/expires=\d+/,
     'Upload-Limit, interop 6');

$r = req('HEAD', $url, iv(6));
is($r->{status}, 204, 'offset retrieval: 204');
is($r->{headers}{'upload-offset'}, $Q, 'Upload-Offset');
is($r->{headers}{'upload-complete'}, '?0', 'Upload-Complete: ?0');
is($r->{headers}{'upload-length'}, $len, 'Upload-Length');
like($r->{headers}{'upload-limit'} // '', qr/max-size=\d+/, 'Upload-Limit');
is($r->{headers}{'cache-control'}, 'no-store', 'no-store');

# at a wrong offset

$before = gcs_requests();
$r = append(6, $url, 0, substr($data, 0, 1000), 'Upload-Complete' => '?0');
is($r->{status}, 409, 'an append at a wrong offset: 409');
my $p = problem($r);
is($p && $p->{type}, "${P}mismatching-upload-offset",
   'problem type mismatching-upload-offset');
is($p && $p->{'expected-offset'}, $Q, 'expected-offset');
is($p && $p->{'provided-offset'}, 0, 'provided-offset');
is($r->{headers}{'upload-offset'}, $Q, 'Upload-Offset on the 409');
is($r->{headers}{'upload-complete'}, '?0', 'Upload-Complete: ?0 on it');

# of another type (interop 6 and 8 append application/partial-upload)

$r = append(6, $url, $Q, 'x', 'Upload-Complete' => '?0',
            'Content-Type' => 'application/octet-stream');
is($r->{status}, 415, 'an append of another type: 415');

# past the length

$r = append(6, $url, $Q, substr($data, $Q) . 'extra',
            'Upload-Complete' => '?0');
is($r->{status}, 400, 'an append past the length: 400');
is(problem($r) && problem($r)->{type}, "${P}inconsistent-upload-length",
   'problem type inconsistent-upload-length');

$r = append(6, $url, $Q, substr($data, $Q, 1000), 'Upload-Complete' => '?1');
is($r->{status}, 400, 'a last append that ends short of the length: 400');

$r = append(6, $url, $Q, substr($data, $Q, 1000), 'Upload-Complete' => '?0',
            'Upload-Length' => $len + 1);
is(problem($r) && problem($r)->{type}, "${P}inconsistent-upload-length",
   'another Upload-Length: inconsistent-upload-length');

is(req('HEAD', $url, iv(6))->{headers}{'upload-offset'}, $Q,
   'none of them moved the offset');

# appends: one short of the next mark, one past it, the last

$r = append(6, $url, $Q, substr($data, $Q, 1000), 'Upload-Complete' => '?0');
is($r->{status}, 201, 'an append short of the next mark: 201 (interop 6)');
is($r->{headers}{'upload-offset'}, $Q, 'Upload-Offset: nothing kept');
is($r->{headers}{'upload-complete'}, '?0', 'Upload-Complete: ?0');

$r = append(8, $url, $Q, substr($data, $Q, $Q + 5), 'Upload-Complete' => '?0');
is($r->{status}, 204, 'an append past a mark: 204 (interop 8)');
is($r->{headers}{'upload-offset'}, 2 * $Q, 'an append past a mark: kept');

$r = append(6, $url, 2 * $Q, substr($data, 2 * $Q), 'Upload-Complete' => '?1');
is($r->{status}, 200, 'the last append: 200');
is($r->{headers}{'upload-complete'}, '?1', 'Upload-Complete: ?1');
is($r->{headers}{'upload-offset'}, $len, 'Upload-Offset: the length');
is($r->{json} && $r->{json}{name}, 'parts.bin', 'the object\'s JSON');
$s = stored('parts.bin');
ok($s && $s->{data} eq $data, 'GCS holds every byte of the parts');
is($s && $s->{meta}{crc32c},
   CloudAuth::Upload::crc32c_b64(CloudAuth::Upload::crc32c($data)),
   'and their CRC32C');

# a completed upload appended to

$r = req('HEAD', $url, iv(6));
is($r->{headers}{'upload-complete'}, '?1', 'HEAD of it: Upload-Complete ?1');
is($r->{headers}{'upload-offset'}, $len, 'at the length');

$r = append(6, $url, $len, '', 'Upload-Complete' => '?1');
is($r->{status}, 200, 'an empty last append to it again: the answer again');

$r = append(8, $url, 0, 'abc', 'Upload-Complete' => '?0');
is($r->{status}, 400, 'an append to a completed upload: 400');
is(problem($r) && problem($r)->{type}, "${P}completed-upload",
   'problem type completed-upload');
is($r->{headers}{'upload-complete'}, '?0',
   'Upload-Complete: ?0, the protocol\'s answer (interop 8)');
is(append(6, $url, 0, 'abc', 'Upload-Complete' => '?0')
       ->{headers}{'upload-complete'}, '?1',
   'interop 6: Upload-Complete: ?1, the upload is');
ok(stored('parts.bin')->{data} eq $data, 'the object is untouched');

###############################################################################
# an empty creation (tus-js-client without data), interop 5: no type asked

$data = CloudAuth::Upload::pattern(2 * $Q + 10);

$r = send_body('POST', '/files/', '', iv(5), 'Upload-Complete' => '?0',
               'Upload-Length' => length $data,
               'Upload-Metadata' => meta(filename => 'five.bin'));
is($r->{status}, 201, 'interop 5: an empty creation, 201');
$url = $r->{headers}{location};

$r = send_body('PATCH', $url, $data, iv(5), 'Upload-Offset' => 0,
               'Upload-Complete' => '?1');
is($r->{status}, 200, 'interop 5: an append without Content-Type');
ok((stored('five.bin') // {})->{data} eq $data, 'interop 5: stored');

###############################################################################
# interop 3 (URLSession): Upload-Incomplete, creation by PUT to the name

$data = CloudAuth::Upload::pattern(2 * $Q + 99);

$r = send_body('PUT', '/files/v3/photo.heic', substr($data, 0, $Q + 7), iv(3),
               'Upload-Incomplete' => '?1');
is($r->{status}, 201, 'interop 3: a PUT with a part, 201');
is($r->{interim}[0] && $r->{interim}[0]{status}, 104, 'interop 3: a 104');
is($r->{headers}{'upload-incomplete'}, '?1', 'Upload-Incomplete: ?1');
$url = $r->{headers}{location};

$r = req('HEAD', $url, iv(3));
is($r->{status}, 204, 'interop 3: offset retrieval');
is($r->{headers}{'upload-incomplete'}, '?1', 'interop 3: still incomplete');

$r = send_body('PATCH', $url, substr($data, $Q), iv(3),
               'Upload-Offset' => $Q);
is($r->{status}, 200, 'interop 3: the last part (no Upload-Incomplete)');
ok((stored('v3/photo.heic') // {})->{data} eq $data,
   'interop 3: the URI names the object');

###############################################################################
# naming: Content-Disposition when there is no Upload-Metadata

$r = send_body('POST', '/files/cd/', 'abc', iv(8), 'Upload-Complete' => '?1',
               'Content-Disposition' => 'attachment; filename="a b.txt"');
is($r->{json} && $r->{json}{name}, 'cd/a b.txt',
   'Content-Disposition\'s filename');

$r = send_body('POST', '/files/cd/', 'abc', iv(8), 'Upload-Complete' => '?1',
               'Content-Disposition' =>
                   "attachment; filename=x.txt; filename*=UTF-8''%C3%A9t%C3%A9.txt");
is($r->{json} && $r->{json}{name}, "cd/\x{e9}t\x{e9}.txt",
   'filename* before filename');

# and through object=, $cloudauth_filename: the file name, else the URI's
# last segment

$r = send_body('PUT', '/named/x/seg.bin', 'abc', iv(8),
               'Upload-Complete' => '?1');
is($r->{json} && $r->{json}{name}, 'ietf/seg.bin',
   'object=: the URI\'s last segment');
$r = send_body('POST', '/named/', 'abc', iv(8), 'Upload-Complete' => '?1',
               'Upload-Metadata' => meta(filename => 'm.bin'));
is($r->{json} && $r->{json}{name}, 'ietf/m.bin', 'object=: the file name');

###############################################################################
# limits: max_size=

$r = send_body('POST', '/small/', '', iv(8), 'Upload-Complete' => '?0',
               'Upload-Length' => 2 * 1024 * 1024);
is($r->{status}, 413, 'Upload-Length over max_size: 413');
like($r->{headers}{'upload-limit'} // '', qr/max-size=1048576/,
     'with Upload-Limit');

###############################################################################
# cancellation

$r = send_body('POST', '/files/', substr($data, 0, $Q), iv(8),
               'Upload-Complete' => '?0',
               'Upload-Metadata' => meta(filename => 'gone.bin'));
$url = $r->{headers}{location};
is($r->{headers}{'upload-offset'}, $Q, 'a creation to cancel: 256 KiB in');

$r = req('DELETE', $url, iv(8));
is($r->{status}, 204, 'cancellation: 204');
is(req('HEAD', $url, iv(8))->{status}, 404, 'then HEAD: 404');
is(append(8, $url, $Q, 'x', 'Upload-Complete' => '?0')->{status}, 404,
   'and an append: 404');
ok(!stored('gone.bin'), 'nothing stored');

###############################################################################
# a creation cut after its 104: the URL came before any byte of the body,
# the client resumes from it

$data = CloudAuth::Upload::pattern(3 * $Q);
{
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $t->port('nginx'))
        or die "connect: $!";
    print $sock "POST /files/ HTTP/1.1\r\nHost: localhost\r\n"
        . "Upload-Draft-Interop-Version: 8\r\nUpload-Complete: ?1\r\n"
        . 'Upload-Metadata: ' . meta(filename => 'cut.bin') . "\r\n"
        . 'Content-Length: ' . length($data) . "\r\n\r\n";

    my $in = '';
    my $sel = IO::Select->new($sock);
    while ($in !~ /\r\n\r\n/ && $sel->can_read(10 * CloudAuth::Test::tf())) {
        sysread($sock, $in, 4096, length $in) or last;
    }

    like($in, qr{^HTTP/1\.1 104 Upload Resumption Supported\r\n},
         'a 104 before a byte of the body was sent');
    ($url) = $in =~ /^Location: (\S+)\r$/m;
    ok($url, 'with the URL');

    print $sock substr($data, 0, 2 * $Q + 100);
    close $sock;
}

# GCS gets what it can keep of the cut body: bounded, by the offset
my $held = 0;
for (1 .. 100 * CloudAuth::Test::tf()) {
    $held = req('HEAD', $url, iv(8))->{headers}{'upload-offset'} // 0;
    last if $held == 2 * $Q;
    select undef, undef, undef, 0.1;
}
is($held, 2 * $Q, 'the cut creation: GCS holds its 256 KiB marks');

$r = append(8, $url, $held, substr($data, $held), 'Upload-Complete' => '?1');
is($r->{status}, 200, 'resumed from the 104\'s URL: 200');
ok((stored('cut.bin') // {})->{data} eq $data, 'stored whole');

###############################################################################
# HTTP/2: no interim response, the URL in the answer

{
    my $h2 = 'http://127.0.0.1:' . $t->port('h2');
    my $c = 'curl -s --http2-prior-knowledge -o /dev/null -D -';
    my $file = $t->write_file('h2.bin', substr($data, 0, $Q + 3));
    my $out = `$c -X POST -H 'Upload-Draft-Interop-Version: 8' -H 'Upload-Complete: ?0' -H 'Upload-Metadata: ${\ meta(filename => 'h2.bin')}' --data-binary \@$file $h2/files/ 2>&1`;
    like($out, qr{^HTTP/2 201}m, 'HTTP/2: creation, 201');
    unlike($out, qr{^HTTP/2 104}m, 'HTTP/2: no 104');
    like($out, qr{^location: /files/\S+}mi, 'HTTP/2: Location');
    like($out, qr{^upload-offset: $Q\r?$}mi, 'HTTP/2: Upload-Offset');
}

# curl over HTTP/1.1 takes the 104 and goes on to the answer

{
    my $h1 = 'http://127.0.0.1:' . $t->port('nginx');
    my $file = $t->write_file('h1.bin', 'abc');
    my $out = `curl -s -o /dev/null -D - -X POST -H 'Upload-Draft-Interop-Version: 8' -H 'Upload-Complete: ?1' -H 'Content-Disposition: attachment; filename=curl.bin' --data-binary \@$file $h1/files/ 2>&1`;
    like($out, qr{^HTTP/1\.1 104 Upload Resumption Supported}m,
         'curl, HTTP/1.1: the 104');
    like($out, qr{^HTTP/1\.1 201}m, 'curl, HTTP/1.1: then 201');
    ok((stored('curl.bin') // {})->{data} eq 'abc', 'curl: stored');

    $out = `curl -s -o /dev/null -D - -X POST -H 'Expect: 100-continue' -H 'Upload-Draft-Interop-Version: 8' -H 'Upload-Complete: ?1' -H 'Content-Disposition: attachment; filename=curl2.bin' --data-binary \@$file $h1/files/ 2>&1`;
    like($out, qr{^HTTP/1\.1 104 .*^HTTP/1\.1 100 Continue.*^HTTP/1\.1 201}ms,
         'Expect: 100-continue: the 104, still the 100, then 201');
}

###############################################################################
# CORS

$r = req('OPTIONS', '/files/', Origin => 'https://app.example',
         'Access-Control-Request-Method' => 'PATCH',
         'Access-Control-Request-Headers' =>
             'upload-complete,upload-offset,upload-draft-interop-version');
is($r->{status}, 204, 'preflight for an append: 204');
like($r->{headers}{'access-control-allow-headers'} // '',
     qr/upload-draft-interop-version/, 'the draft\'s headers allowed');

$r = send_body('POST', '/files/', '', iv(8), 'Upload-Complete' => '?0',
               Origin => 'https://app.example',
               'Upload-Metadata' => meta(filename => 'cors.bin'));
like($r->{headers}{'access-control-expose-headers'} // '',
     qr/Location.*Upload-Offset.*Upload-Complete.*Upload-Limit/,
     'the draft\'s headers exposed');
unlike($r->{headers}{'access-control-expose-headers'} // '', qr/Tus-/,
       'not tus\'s');
$url = $r->{headers}{location};

$before = gcs_requests();
is(req('HEAD', $url, iv(8), Origin => 'https://evil.example')->{status}, 403,
   'HEAD from an unlisted origin: 403');
is(append(8, $url, 0, 'x', 'Upload-Complete' => '?0',
          'Sec-Fetch-Site' => 'cross-site')->{status}, 403,
   'a cross-site append: 403');
is(gcs_requests(), $before, 'GCS untouched by them');

###############################################################################
# the IDs: forged, altered, from another location

my ($id) = $url =~ m{/([^/]+)$};

for my $k (0, 20, length($id) - 1) {
    my $x = $id;
    substr($x, $k, 1) = substr($x, $k, 1) eq 'A' ? 'B' : 'A';
    is(req('HEAD', "/files/$x", iv(8))->{status}, 404,
       "an ID altered at $k: 404");
}

is(req('HEAD', '/files/' . ('A' x 200), iv(8))->{status}, 404,
   'a forged ID: 404');
$r = req('DELETE', '/files/' . ('A' x 200), iv(8));
is(problem($r) && problem($r)->{status}, 404,
   'a DELETE with it: 404 as problem details');
is(req('HEAD', "/other/$id", iv(8))->{status}, 404,
   'the ID at another location: 404');
is(append(8, "/other/$id", 0, 'x', 'Upload-Complete' => '?0')->{status}, 404,
   'an append with it there: 404');
is(req('DELETE', "/other/$id", iv(8))->{status}, 404,
   'a DELETE with it there: 404');
is(gcs_requests(), $before, 'GCS untouched by any of them');
is(req('HEAD', $url, iv(8))->{status}, 204, 'the ID itself still works');

###############################################################################
# expiry: expires= is the upload URL's life, max-age what is left of it

$r = send_body('POST', '/brief/', '', iv(8), 'Upload-Complete' => '?0',
               'Upload-Metadata' => meta(filename => 'brief.bin'));
my $burl = $r->{headers}{location};
like($r->{headers}{'upload-limit'} // '', qr/max-age=2$/,
     'expires=2s: max-age=2 at creation');
is(req('HEAD', $burl, iv(8))->{status}, 204, 'expires=2s: works at once');

# the expiry is a time: waiting it out is the test (2 s, in whole seconds
# of the creation time, + a margin)
select undef, undef, undef, 3.1;
is(req('HEAD', $burl, iv(8))->{status}, 404, 'expires=2s: 404 after it');

###############################################################################
# tus and single requests on the same location are unchanged

$r = req('POST', '/files/', 'Tus-Resumable' => '1.0.0', 'Upload-Length' => 3,
         'Upload-Metadata' => meta(filename => 'tus.bin'), -body => '');
is($r->{status}, 201, 'a tus creation beside it: 201');
is($r->{headers}{'tus-resumable'}, '1.0.0', 'with Tus-Resumable');
($r) = CloudAuth::Upload::upload($t, '/files/single.bin', size => 1000);
is($r->{status}, 201, 'a single PUT: 201');
ok(!@{ $r->{interim} // [] }, 'and no 104 for it');

###############################################################################
# a creation whose session cannot start (the token endpoint failing): one
# answer, and a request pipelined behind it is served (the request was
# finalized twice once, "header already sent")

$t->token_set(status => 503, error => 'backendError',
              error_description => 'the fake is down');
for my $i (1, 2) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port('nginx'))
        or die "connect: $!";
    print $s "POST /down/down-$i HTTP/1.1\r\nHost: localhost\r\n"
             . "Upload-Draft-Interop-Version: 6\r\n"
             . "Upload-Complete: ?1\r\nContent-Length: 5\r\n\r\nhello"
             . "GET /down/ HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\n\r\n";
    my $in = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(10 * $t->tf)) {
        my $n = sysread $s, my $buf, 65536;
        last unless $n;
        $in .= $buf;
    }
    close $s;
    my @st = grep { $_ >= 200 } $in =~ m{^HTTP/1\.1 (\d+)}mg;
    is(scalar @st, 2, "token down, creation $i: two answers on the connection")
        or diag $in;
    like($st[0] // '', qr/^5\d\d$/, "token down, creation $i: a 5xx");
}
$t->token_set;
unlike($t->error_log, qr/header already sent/, 'no request answered twice');

###############################################################################
# the draft's headers are given once

($r) = CloudAuth::Upload::upload($t, '/files/twice.bin', method => 'POST',
    data => 'hello', headers => { iv(6),
        'Upload-Complete' => ['?0', '?1'] });
is($r->{status}, 400, 'Upload-Complete twice: 400');
ok(!stored('twice.bin'), 'nothing stored');

###############################################################################
# logs

$t->stop;
unlike($t->error_log, qr/upload_id=/, 'no session URI in the error log');
unlike($t->read_file('upload.log'), qr/upload_id=/, 'nor in the access log');
like($t->read_file('upload.log'), qr{^POST /files/ 201 partial \d+$}m,
     '$cloudauth_upload_status of a created part: partial');
like($t->read_file('upload.log'), qr{^PATCH /files/\S+ 200 stored \d+$}m,
     'of the last append: stored');
is(join("\n", $t->check_log), '', 'no alert, crit or sanitizer report');

done_testing;
