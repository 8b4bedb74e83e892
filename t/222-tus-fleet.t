#!/usr/bin/perl

# Resumable uploads across a fleet: an upload started through one nginx
# (its own master, zone and prefix) is finished through a second nginx
# that shares its cloudauth_upload_key (32 random bytes, made here with
# openssl rand), after the first was killed (SIGKILL, master and workers:
# a crash, nothing written on the way out).  Both talk to one fake GCS.
# With another key the second nginx answers 404 to HEAD, PATCH and DELETE
# on the upload URL and sends nothing to GCS.  Raw tus requests, and the
# same for an upload of the IETF draft (interop 8) beside it.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);
use Test::More;

use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $B = 'test-bucket';
my $Q = 256 * 1024;
my $SIZE = 3 * 1024 * 1024 + 1000;
my $data = CloudAuth::Upload::pattern($SIZE);

# the first gateway, with the fakes (token endpoint, GCS) the second uses

my $t1 = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t1);

my $d1 = $t1->dir;

for my $k (qw(upload other)) {
    $t1->openssl("rand -out $k.key 32");
    chmod 0600, "$d1/$k.key";
}

# the http{} of a gateway: its own paths, the first's fakes and CA
sub conf {
    my ($t, $key) = @_;

    my $gcs = $t1->port('gcs');

    return <<"EOF";
    cloudauth_upload_key $key;
    cloudauth_trusted_certificate $d1/ca.crt;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=$d1/sa.json scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 10m;

        location /files/ {
            cloudauth_gcs_upload google bucket=$B resumable=on
                chunk_size=256k endpoint=https://127.0.0.1:$gcs;
        }
    }
EOF
}

# the second gateway's own copy of the shared key, and the other key
my $t2 = CloudAuth::Test->new(fakes => 0);
my $d2 = $t2->dir;

for my $k (qw(upload other)) {
    $t2->write_file("$d2/$k.key", $t1->read_file("$d1/$k.key"), 0600);
}

sub tus {
    my ($t, $method, $path, %h) = @_;
    return $t->http_get($path, -method => $method, 'Tus-Resumable' => '1.0.0',
                        %h);
}

my %OCTETS = ('Content-Type' => 'application/offset+octet-stream');

sub gcs_requests { scalar(my @r = CloudAuth::FakeGCS->requests($t1)) }

# started through the first

$t1->run(conf($t1, "$d1/upload.key"));

my $r = tus($t1, 'POST', '/files/', 'Upload-Length' => $SIZE,
            'Upload-Metadata' => 'filename ' . encode_base64('fleet.bin', ''),
            -body => '');
is($r->{status}, 201, 'first gateway: created');

my $loc = $r->{headers}{location} // '';
like($loc, qr{^/files/[A-Za-z0-9_-]+$}, 'Location is /files/ID');

my $first = 1024 * 1024 + 100;
$r = tus($t1, 'PATCH', $loc, %OCTETS,
         'Upload-Offset' => 0, -body => substr($data, 0, $first));
is("$r->{status} " . ($r->{headers}{'upload-offset'} // '-'),
   '204 1048576', 'first gateway: 1 MiB + 100 bytes sent, 1 MiB stored');

# an IETF draft upload beside it: a creation with a part

my %IETF = ('Upload-Draft-Interop-Version' => 8);
$r = $t1->http_get('/files/', -method => 'POST', %IETF,
                   'Upload-Complete' => '?0', 'Upload-Length' => $SIZE,
                   'Upload-Metadata' => 'filename '
                                        . encode_base64('ietf.bin', ''),
                   -body => substr($data, 0, $first));
is("$r->{status} " . ($r->{headers}{'upload-offset'} // '-'),
   '201 1048576', 'first gateway, IETF: created with 1 MiB stored');
my $iloc = $r->{headers}{location} // '';

# killed: master first (no respawn), then its workers

my @pids = ($t1->master_pid, $t1->worker_pids);
kill 'KILL', @pids;
$t1->stop;
ok($t1->wait_for(sub {
       !IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                              PeerPort => $t1->port('nginx'))
       && !grep { kill 0, $_ } @pids[1 .. $#pids] }, 10),
   'first gateway: killed, nothing listens');

# the second, with another key: 404, GCS untouched

my $before = gcs_requests();

$t2->run(conf($t2, "$d2/other.key"));

$r = tus($t2, 'HEAD', $loc);
is($r->{status}, 404, 'another key: HEAD 404');
$r = tus($t2, 'PATCH', $loc, %OCTETS,
         'Upload-Offset' => 1048576, -body => substr($data, 1048576, $Q));
is($r->{status}, 404, 'another key: PATCH 404');
$r = tus($t2, 'DELETE', $loc);
is($r->{status}, 404, 'another key: DELETE 404');
$r = $t2->http_get($iloc, -method => 'HEAD', %IETF);
is($r->{status}, 404, 'another key, IETF: HEAD 404');
is(gcs_requests(), $before, 'another key: nothing sent to GCS');

$t2->check_log_ok('another key: no alert, crit or emerg');

# the second, with the shared key: it continues where GCS is

$t2->run(conf($t2, "$d2/upload.key"));

$r = tus($t2, 'HEAD', $loc);
is($r->{status}, 200, 'shared key: HEAD 200');
is($r->{headers}{'upload-offset'}, 1048576,
   'shared key: Upload-Offset is what GCS holds');
is($r->{headers}{'upload-length'}, $SIZE, 'shared key: Upload-Length');

$r = tus($t2, 'PATCH', $loc, %OCTETS,
         'Upload-Offset' => 1048576, -body => substr($data, 1048576));
is("$r->{status} " . ($r->{headers}{'upload-offset'} // '-'), "204 $SIZE",
   'shared key: the rest sent, the upload complete');

my $sent = CloudAuth::Upload::sent_of($data);
my $g = CloudAuth::Upload::stored_ok($t1, $B, 'fleet.bin', $sent,
                                     'started on one, finished on another');
is($r->{headers}{'cloudauth-object-crc32c'},
   CloudAuth::Upload::crc32c_b64($sent->{crc32c}),
   'the answer names the CRC32C');
is($r->{headers}{'cloudauth-object-generation'},
   $g && $g->{meta}{generation}, 'and the generation');

$r = tus($t2, 'HEAD', $loc);
is("$r->{status} " . ($r->{headers}{'upload-offset'} // '-'), "200 $SIZE",
   'HEAD after completion: the whole length');

$r = $t2->http_get($iloc, -method => 'HEAD', %IETF);
is("$r->{status} " . ($r->{headers}{'upload-offset'} // '-'), '204 1048576',
   'shared key, IETF: HEAD, what GCS holds');
$r = $t2->http_get($iloc, -method => 'PATCH', %IETF,
                   'Upload-Offset' => 1048576, 'Upload-Complete' => '?1',
                   'Content-Type' => 'application/partial-upload',
                   -body => substr($data, 1048576));
is("$r->{status} " . ($r->{headers}{'upload-offset'} // '-'), "200 $SIZE",
   'shared key, IETF: the rest appended, complete');
CloudAuth::Upload::stored_ok($t1, $B, 'ietf.bin', $sent,
                             'IETF: started on one, finished on another');

is(scalar(my @s = CloudAuth::FakeGCS->sessions($t1)), 2,
   'one GCS session for each upload');

$t2->check_log_ok;

# the first, killed, has no report; its log has no alert before the kill
is(join("\n", grep { !/nginx exited with status/ } $t1->check_log), '',
   'first gateway: no alert, crit or emerg');

done_testing;
