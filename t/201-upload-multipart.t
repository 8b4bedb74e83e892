#!/usr/bin/perl

# cloudauth_gcs_upload, browser forms: each file part of a
# multipart/form-data body becomes its own object, parsed as a stream in
# chunks of chunk_size; the plain fields before a file become its custom
# metadata; the answer is a JSON array.  Malformed forms get 400.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

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
        client_max_body_size 20m;

        location /form/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
            access_log %%TESTDIR%%/upload.log upload;
        }

        location /tmpl/ {
            cloudauth_gcs_upload google bucket=test-bucket
                object=forms/$arg_id/$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

my $BOUNDARY = '----WebKitFormBoundaryq7Zr0AcPf3xT9w2e';
my $CT = "multipart/form-data; boundary=$BOUNDARY";

# form(PART...): PART is [name => value] or [name => data, filename, type,
# {extra headers}]
sub form {
    my $body = '';
    for my $p (@_) {
        my ($name, $data, $file, $type, $h) = @$p;
        $body .= "--$BOUNDARY\r\n"
               . "Content-Disposition: form-data; name=\"$name\""
               . (defined $file ? "; filename=\"$file\"" : '') . "\r\n";
        $body .= "Content-Type: $type\r\n" if $type;
        $body .= "$_: $h->{$_}\r\n" for sort keys %{ $h || {} };
        $body .= "\r\n$data\r\n";
    }
    return $body . "--$BOUNDARY--\r\n";
}

# the pattern's bytes contain CRLF-- sequences only by chance; make one
# file that has delimiter look-alikes on purpose
my $tricky = "a\r\n--$BOUNDARY" . "x\r\n\r\n--" . substr($BOUNDARY, 0, 10)
             . "\r\r\n" . CloudAuth::Upload::pattern(1000);

my @files = (
    ['one.txt', 'text/plain', 'hello, world'],
    ['two.bin', 'application/octet-stream',
     CloudAuth::Upload::pattern(600 * 1024 + 3)],
    ['three.dat', undef, $tricky . CloudAuth::Upload::pattern(262144)],
);

my $body = form(['title', 'Quarterly numbers'],
                ['owner', "J\xc3\xbcrgen"],
                map({ ['file', $_->[2], $_->[0], $_->[1]] } @files));

for my $chunked (0, 1) {
    my $dir = $chunked ? 'c' : 'k';

    my ($r) = CloudAuth::Upload::put($t, "/form/$dir/", $body,
                                     method => 'POST', chunked => $chunked,
                                     headers => { 'Content-Type' => $CT });
    my $what = $chunked ? 'chunked form' : 'form';

    is($r->{status}, 201, "$what with 3 files and 2 fields: 201")
        or diag $r->{body};
    is(ref $r->{json}, 'ARRAY', "$what: a JSON array");
    is(scalar @{ $r->{json} || [] }, 3, "$what: three objects");

    for my $i (0 .. 2) {
        my ($file, $type, $data) = @{ $files[$i] };
        my $j = $r->{json}[$i] || {};
        is($j->{name}, "$dir/$file", "$what: $file named by the form's URI");
        is($j->{size}, length $data, "$what: $file size");
        is($j->{contentType}, $type // 'application/octet-stream',
           "$what: $file content type");
        my $o = CloudAuth::Upload::stored_ok($t, $B, "$dir/$file",
                    CloudAuth::Upload::sent_of($data), "$what: $file");
        is_deeply($o && $o->{meta}{metadata},
                  { title => 'Quarterly numbers', owner => "J\x{fc}rgen" },
                  "$what: $file has the fields as metadata");
    }
}

my @req = grep { $_->{uri} =~ /upload_id=/ }
          CloudAuth::FakeGCS->requests($t);
my @big = grep { ($_->{content_range} // '') =~ m{/\*$} } @req;
ok(scalar @big >= 4, 'files of unknown length go in 256 KiB chunks')
    and is(join(' ', map { $_->{length} } @big[0 .. 1]), '262144 262144',
           'each a multiple of 256 KiB');

# fields after a file apply to the next files; empty file inputs are
# skipped; the file name is sanitised

my ($r) = CloudAuth::Upload::put($t, '/tmpl/?id=42', form(
              ['a', '1'],
              ['f', 'first', 'C:\\Users\\me\\first.txt', 'text/plain'],
              ['b', '2'],
              ['empty', '', '', 'application/octet-stream'],
              ['f', 'second', '../../etc/pass wd', 'text/plain']),
              method => 'POST', headers => { 'Content-Type' => $CT });
is($r->{status}, 201, 'form: fields between files');
is(join(',', map { $_->{name} } @{ $r->{json} || [] }),
   'forms/42/first.txt,forms/42/pass wd',
   'object= template; file names sanitised; the empty file input skipped');
is_deeply(CloudAuth::FakeGCS->object($t, $B, 'forms/42/first.txt')
          ->{meta}{metadata}, { a => '1' }, 'first file: the field before it');
is_deeply(CloudAuth::FakeGCS->object($t, $B, 'forms/42/pass wd')
          ->{meta}{metadata}, { a => '1', b => '2' },
          'second file: the fields before it');

# a part's Content-MD5

my $d = 'checked bytes';
my $md5 = CloudAuth::Upload::sent_of($d)->{md5};
($r) = CloudAuth::Upload::put($t, '/form/md5/', form(
           ['f', $d, 'ok.txt', 'text/plain', { 'Content-MD5' => $md5 }]),
           method => 'POST', headers => { 'Content-Type' => $CT });
is($r->{status}, 201, 'part with the right Content-MD5');
($r) = CloudAuth::Upload::put($t, '/form/md5/', form(
           ['f', "$d!", 'bad.txt', 'text/plain', { 'Content-MD5' => $md5 }]),
           method => 'POST', headers => { 'Content-Type' => $CT });
is($r->{status}, 400, 'part with a wrong Content-MD5: 400');
ok(!CloudAuth::FakeGCS->object($t, $B, 'md5/bad.txt'), 'not stored');

# malformed forms

my $good = form(['f', 'x', 'x.txt']);

for my $bad (
    ['no closing boundary', substr($good, 0, -(length($BOUNDARY) + 6)),
     qr/closing boundary/],
    ['no boundary at all', 'just some bytes', qr/no boundary/],
    ['garbage after a boundary', "--${BOUNDARY}zz\r\n", qr/garbage/],
    ['part without Content-Disposition',
     "--$BOUNDARY\r\nContent-Type: text/plain\r\n\r\nx\r\n--$BOUNDARY--\r\n",
     qr/Content-Disposition/],
    ['no file', form(['a', 'b']), qr/no file/])
{
    my ($what, $b, $why) = @$bad;
    ($r) = CloudAuth::Upload::put($t, '/form/bad/', $b, method => 'POST',
                                  headers => { 'Content-Type' => $CT });
    is($r->{status}, 400, "$what: 400");
    like($r->{json}{error}{message} // '', $why, "$what: the reason");
}

for my $ct ('multipart/form-data', 'multipart/form-data; boundary=',
            'multipart/form-data; boundary="a' . ('b' x 80) . '"')
{
    ($r) = CloudAuth::Upload::put($t, '/form/bad/', $good, method => 'POST',
                                  headers => { 'Content-Type' => $ct });
    is($r->{status}, 400, "Content-Type \"$ct\": 400");
}

ok($t->wait_for(sub {
       !grep { $_->{state} eq 'open' } CloudAuth::FakeGCS->sessions($t)
   }), 'no session left open');
ok(!grep({ $_->{name} =~ m{^bad/} } CloudAuth::FakeGCS->objects($t)),
   'nothing stored from the malformed forms');

# limits: fields, files

($r) = CloudAuth::Upload::put($t, '/form/lim/', form(
           map({ ["f$_", 'x' x 1100] } 1 .. 60), ['f', 'x', 'x.txt']),
           method => 'POST', headers => { 'Content-Type' => $CT });
is($r->{status}, 413, 'fields over 64 KiB: 413');
like($r->{json}{error}{message} // '', qr/form fields are too large/,
     'fields over 64 KiB: the reason');

($r) = CloudAuth::Upload::put($t, '/form/many/', form(
           map({ ['f', '', "e$_.txt"] } 1 .. 1001)),
           method => 'POST', headers => { 'Content-Type' => $CT });
is($r->{status}, 413, '1001 files in a form: 413');
like($r->{json}{error}{message} // '', qr/more than 1000 files/,
     '1001 files: the reason');

# a PUT of multipart is a raw body

($r) = CloudAuth::Upload::put($t, '/form/raw.multipart', $good,
                              headers => { 'Content-Type' => $CT });
is($r->{status}, 201, 'PUT multipart/form-data: stored as is');
is($r->{json}{size}, length $good, 'PUT multipart/form-data: one object');

$t->stop;

my $log = $t->read_file('upload.log');
like($log, qr{^POST /form/k/ 201 stored \d+ "k/one\.txt,k/two\.bin,k/three\.dat"$}m,
     'log: all stored objects');

is(join(', ', $t->leaks($log)), '', 'no token in the logs');
$t->check_log_ok;

done_testing;
