#!/usr/bin/perl

# A tus client no one here wrote: tus-js-client (npm, pinned by
# t/tus/package-lock.json; tools/deps.sh test installs it), in Node,
# uploads to a resumable=on location through a relay
# (CloudAuth::CutProxy) that cuts its connection several times mid-PATCH.
# The client retries as it does by itself (HEAD, then PATCH from the
# offset the gateway reports), the upload completes, and the object in the
# fake GCS has the bytes and CRC32C that were sent, the name and content
# type from Upload-Metadata, and the final answer's Cloudauth-Object-*
# headers say so.  64 MiB with chunkSize Infinity (the whole rest in each
# PATCH, tus-js-client's default), then a smaller file with chunkSize
# 1 MiB (a multiple of 256 KiB) and the data in the creation POST.  Node
# or the package missing is a failure, never a skip.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;

use CloudAuth::Test;
use CloudAuth::CutProxy;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $root = $CloudAuth::Test::ROOT;
my $B = 'test-bucket';
my $MiB = 1024 * 1024;
my $Q = 256 * 1024;
my $CHUNK = 1 * $MiB;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

$t->run(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 100m;

        location /files/ {
            cloudauth_gcs_upload google bucket=$B resumable=on
                chunk_size=1m object=tus/\$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

# tus-js-client -------------------------------------------------------------

sub client {
    my ($opt) = @_;

    my $node = `sh -c 'command -v node'`;
    chomp $node;

    if (!$node) {
        fail('node runs tus-js-client: node is missing; '
             . 'run "tools/deps.sh test"');
        return;
    }

    my $err = $t->dir . '/tus.err';
    my $pid = open my $fh, '-|';
    die "fork: $!" unless defined $pid;

    if (!$pid) {
        open STDERR, '>', $err or die "$err: $!";
        exec 'timeout', 200 * CloudAuth::Test::tf(), $node,
             "$root/t/tus/upload.js", encode_json($opt);
        exit 127;
    }

    my $text = do { local $/; <$fh> };
    close $fh;
    my $rc = $? >> 8;
    my $res = eval { decode_json($text // '') };

    ok($rc == 0 && $res, 'tus-js-client ran')
        or diag("t/tus/upload.js exited $rc:\n" . $t->read_file($err)
                . "\nIs it there? tools/deps.sh test installs it.");

    return $rc == 0 ? $res : undef;
}

# what went through the relay: bytes towards nginx, cuts
sub relayed {
    my ($name) = @_;
    my @c = CloudAuth::CutProxy->connections($t, $name);
    my $up = 0;
    $up += $_->{up} for @c;
    return ($up, scalar grep { $_->{cut} } @c);
}

# one upload through a relay cutting at CUTS; checks all but the relay
sub run_upload {
    my (%o) = @_;

    my $what = $o{what};
    my $file = $t->dir . "/$o{name}";
    my $data = CloudAuth::Upload::pattern($o{size});
    $t->write_file($file, $data);
    my $sent = CloudAuth::Upload::sent_of($data);

    my $port = CloudAuth::CutProxy->start($t, name => $o{relay},
        to => $t->port('nginx'), cuts => $o{cuts});

    my $out = client({
        endpoint => "http://127.0.0.1:$port/files/",
        file => $file,
        chunkSize => $o{chunk},
        uploadDataDuringCreation => $o{with_upload} ? JSON::PP::true
                                                    : JSON::PP::false,
        retryDelays => [0, 200, 500, 1000, 2000, 3000],
        metadata => { filename => $o{name}, filetype => $o{type},
                      purpose => 'tus test' },
        timeout => 180000 * CloudAuth::Test::tf(),
    }) or return;

    ok($out->{ok}, "$what: the upload completed")
        or diag("error: " . ($out->{error} // '?') . "\n"
                . JSON::PP->new->canonical->encode($out->{requests}));

    my @req = @{ $out->{requests} || [] };
    my @post = grep { $_->{method} eq 'POST' } @req;
    my @patch = grep { $_->{method} eq 'PATCH' } @req;
    my @head = grep { $_->{method} eq 'HEAD' } @req;

    is(scalar @post, 1, "$what: created once, never started over");
    # a retry per cut; and a HEAD right after a cut may report the offset
    # from before the bytes the cut PATCH was still storing: the PATCH that
    # follows gets 409 (the gateway sees it at the start, or GCS refuses
    # its first chunk: the other request stored more meanwhile; or its
    # connection closed mid-body with it), and tus-js-client asks again
    my @retry = @{ $out->{retries} || [] };
    cmp_ok(scalar(grep { $_->{status} == 0 } @retry), '>=',
           scalar @{ $o{cuts} }, "$what: the client retried after each cut");
    is(join(' ', map { $_->{status} } grep { $_->{status} !~ /^(0|409)$/ }
                                      @retry),
       '', "$what: no retry but after a cut, or a 409")
        or diag(JSON::PP->new->canonical->encode(\@retry));
    diag("$what: " . join(', ', map { "$_->{status} at attempt $_->{attempt}" }
                                grep { $_->{status} } @retry))
        if grep { $_->{status} } @retry;
    is(join(' ', map { $_->{status} // 'cut' } @head),
       join(' ', ('200') x @head), "$what: every HEAD answered 200");

    # every offset reported is a 256 KiB mark, or the end; never back
    my ($prev, $bad) = (0, '');
    for my $r (grep { defined $_->{answer_offset} } @req) {
        my $off = $r->{answer_offset};
        $bad .= " $r->{method}:$off"
            if $off < $prev || ($off % $Q && $off != $o{size});
        $prev = $off;
    }
    is($bad, '', "$what: offsets reported are 256 KiB marks, increasing");

    my ($last) = grep { defined $_->{status} } reverse @patch;
    is($last && $last->{status}, 204, "$what: the last PATCH answered 204");
    is($last && $last->{answer_offset}, $o{size},
       "$what: ... with Upload-Offset the length");

    # the stored object, and what the answer said of it
    my $name = "tus/$o{name}";
    my $g = CloudAuth::Upload::stored_ok($t, $B, $name, $sent, $what);
    my $crc = CloudAuth::Upload::crc32c_b64($sent->{crc32c});
    my $h = $out->{object} || {};

    is_deeply([ @$h{qw(name size crc32c url)} ],
              [ "tus%2F$o{name}", $o{size}, $crc,
                "https://storage.googleapis.com/$B/$name" ],
              "$what: Cloudauth-Object-Name, -Size, -Crc32c and -Url");
    is($h->{generation}, $g && $g->{meta}{generation},
       "$what: Cloudauth-Object-Generation is GCS's");
    is($g && $g->{meta}{contentType}, $o{type},
       "$what: content type from filetype");
    is($g && $g->{meta}{metadata}{purpose}, 'tus test',
       "$what: other metadata as custom metadata");

    my ($up, $cuts) = relayed($o{relay});
    is($cuts, scalar @{ $o{cuts} }, "$what: the relay cut " . @{ $o{cuts} }
                                    . ' connections mid-request');

    return { out => $out, up => $up, cuts => $cuts };
}

# 64 MiB, the whole rest in each PATCH; cuts on the connections' byte
# counts (a connection also carries the POST or HEAD before its PATCH)

my $SIZE = 64 * $MiB;

my $big = run_upload(what => '64 MiB', name => 'big.bin', size => $SIZE,
    type => 'application/x-tus-test', relay => 'cut1', chunk => undef,
    cuts => [ 5 * $MiB + 123, 11 * $MiB + 7, 3 * $MiB + 99,
              17 * $MiB + 1 ]);

if ($big) {
    # what was sent again: the bytes in flight at each cut (in the relay's
    # and nginx's socket buffers, and the part of a chunk_size buffer the
    # gateway had not yet stored), and less than 256 KiB below the last
    # mark; request headers are noise.  A sanity bound, generous: loopback
    # socket buffers grow to a few MiB.
    my $again = $big->{up} - $SIZE;
    diag(sprintf '64 MiB: %d bytes re-sent over %d cuts (%.2f MiB per cut)',
         $again, $big->{cuts}, $again / ($big->{cuts} || 1) / $MiB);
    cmp_ok($again, '<', $big->{cuts} * ($CHUNK + $Q + 8 * $MiB),
           '64 MiB: re-sent less than chunk_size + 256 KiB + 8 MiB '
           . 'per cut');
}

# chunkSize 1 MiB (PATCHes of a multiple of 256 KiB), the first bytes in
# the creation POST (creation-with-upload)

run_upload(what => 'chunkSize 1 MiB', name => 'small.bin',
    size => 6 * $MiB + 1000, type => 'text/plain', relay => 'cut2',
    chunk => $MiB, with_upload => 1,
    cuts => [ 2 * $MiB + 500 * 1024 + 5 ]);

my @s = CloudAuth::FakeGCS->sessions($t);
is(join(' ', map { $_->{state} } @s), 'done done',
   'two GCS sessions, both done: no upload was started over');

$t->check_log_ok;

done_testing;
