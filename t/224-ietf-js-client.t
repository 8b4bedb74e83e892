#!/usr/bin/perl

# The IETF draft's client no one here wrote: tus-js-client 4.3.1 (pinned by
# t/tus/package-lock.json) with protocol 'ietf-draft-03' (it sends
# Upload-Draft-Interop-Version: 5) and 'ietf-draft-05' (6), in Node,
# uploads to a resumable=on location through the relay that cuts its
# connection mid-PATCH (as t/221-tus-js-client.t does for tus).  The
# client resumes by itself (HEAD, then PATCH from the offset the gateway
# reports), the upload is created once and completes, and the object in
# the fake GCS has the bytes and CRC32C that were sent and the name and
# type from Upload-Metadata; the last answer (200, Upload-Complete: ?1)
# is the object's JSON.  Node or the package missing is a failure.

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

# one upload through a relay cutting at CUTS
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
        protocol => $o{protocol},
        chunkSize => $o{chunk},
        uploadDataDuringCreation => $o{with_upload} ? JSON::PP::true
                                                    : JSON::PP::false,
        retryDelays => [0, 200, 500, 1000, 2000, 3000],
        metadata => { filename => $o{name}, filetype => $o{type},
                      purpose => 'ietf test' },
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
    my @retry = @{ $out->{retries} || [] };
    cmp_ok(scalar(grep { $_->{status} == 0 } @retry), '>=',
           scalar @{ $o{cuts} }, "$what: the client retried after each cut");
    is(join(' ', map { $_->{status} } grep { $_->{status} !~ /^(0|409)$/ }
                                      @retry),
       '', "$what: no retry but after a cut, or a 409")
        or diag(JSON::PP->new->canonical->encode(\@retry));
    is(join(' ', map { $_->{status} // 'cut' } @head),
       join(' ', ('204') x @head), "$what: every HEAD answered 204");

    # every offset reported is a 256 KiB mark, or the end; never back
    my ($prev, $bad) = (0, '');
    for my $r (grep { defined $_->{answer_offset} } @req) {
        my $off = $r->{answer_offset};
        $bad .= " $r->{method}:$off"
            if $off < $prev || ($off % $Q && $off != $o{size});
        $prev = $off;
    }
    is($bad, '', "$what: offsets reported are 256 KiB marks, increasing");

    my ($last) = grep { defined $_->{status} } reverse @req;
    is($last && $last->{status}, $o{last} // 200,
       "$what: the last answer: " . ($o{last} // 200));
    is($last && $last->{answer_offset}, $o{size},
       "$what: ... with Upload-Offset the length");

    my $name = "tus/$o{name}";
    my $g = CloudAuth::Upload::stored_ok($t, $B, $name, $sent, $what);
    my $crc = CloudAuth::Upload::crc32c_b64($sent->{crc32c});
    my $json = eval { decode_json($out->{body} // '') } || {};

    is_deeply([ @$json{qw(name size crc32c)} ], [ $name, $o{size}, $crc ],
              "$what: the last answer is the object's JSON, its CRC32C");
    is($g && $g->{meta}{contentType}, $o{type},
       "$what: content type from filetype");
    is($g && $g->{meta}{metadata}{purpose}, 'ietf test',
       "$what: other metadata as custom metadata");

    my ($up, $cuts) = relayed($o{relay});
    is($cuts, scalar @{ $o{cuts} }, "$what: the relay cut " . @{ $o{cuts} }
                                    . ' connections mid-request');

    return { out => $out, up => $up, cuts => $cuts };
}

# the whole rest in each PATCH (chunkSize Infinity), both protocols

for my $p (['ietf-draft-03', 'd3'], ['ietf-draft-05', 'd5']) {
    my ($protocol, $tag) = @$p;

    run_upload(what => "$protocol, 16 MiB", name => "$tag-big.bin",
        protocol => $protocol, size => 16 * $MiB + 4321,
        type => 'application/x-ietf-test', relay => "cut-$tag", chunk => undef,
        cuts => [ 3 * $MiB + 123, 5 * $MiB + 7 ]);
}

# chunkSize 1 MiB and the first bytes in the creation POST

run_upload(what => 'ietf-draft-05, chunkSize 1 MiB', name => 'd5-small.bin',
    protocol => 'ietf-draft-05', size => 3 * $MiB + 1000, type => 'text/plain',
    relay => 'cut-small', chunk => $MiB, with_upload => 1,
    cuts => [ 2 * $MiB + 500 * 1024 + 5 ]);

my @s = CloudAuth::FakeGCS->sessions($t);
is(join(' ', map { $_->{state} } @s), 'done done done',
   'three GCS sessions, all done: no upload was started over');

$t->check_log_ok;

done_testing;
