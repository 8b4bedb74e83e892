#!/usr/bin/perl

# The upload page's resumable uploads in a real browser: nginx serves
# html/upload.html at / and a resumable=on location at /upload/ against the
# fake GCS, and Debian's headless Chromium (playwright-core,
# t/browser/resume.js) reaches both through a relay (CloudAuth::CutProxy)
# that cuts a PATCH of a 20 MiB file midway (and the network for a while).
# The page retries by itself (HEAD, then PATCH from the offset the gateway
# holds); then it is paused and resumed, and the page is reloaded mid-PATCH.
# After the reload it lists the unfinished upload, and picking the same
# file again continues it: HEAD, PATCH from where the gateway is, no new
# creation.  The object in the fake GCS has the bytes and CRC32C of the
# file, which the page lists.  Then a file whose kept upload URL the
# gateway does not know (404 on HEAD) is started over and stored.  The
# browser not running is a failure, never a skip (tools/deps.sh test).
# TEST_NGINX_LEAVE=1 keeps the test directory, with page.png.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Path qw(make_path);
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

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

my $html = $t->copy_in('html');

$t->run(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 50m;

        location / {
            root $html;
            index upload.html;
        }

        location /upload/ {
            cloudauth_gcs_upload google bucket=$B resumable=on chunk_size=1m
                object=uploads/\$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

# the relay: the first connection to carry 6 MiB towards nginx is cut, and
# with it the network goes down for 1.5 s: Chromium sends a request again
# by itself when a connection it had reused breaks, and only when that
# fails too does the page see the error.  The fake GCS answers each 1 MiB
# chunk 0.2 s late, so that the upload takes seconds: time for the page to
# be paused and reloaded mid-way (the waits are on the page's progress).

my $port = CloudAuth::CutProxy->start($t, name => 'cut',
    to => $t->port('nginx'), cuts => [ 6 * $MiB + 77 ], outage => 1.5);
CloudAuth::FakeGCS->faults($t, delay => 0.2);

my $dir = $t->dir . '/files';
make_path($dir);

my $SIZE = 20 * $MiB + 12345;
my %data = ('big.bin' => CloudAuth::Upload::pattern($SIZE),
            'small.bin' => substr(CloudAuth::Upload::pattern(700 * 1024 + 3),
                                  1000));

$t->write_file("$dir/$_", $data{$_}) for keys %data;

my $out = browser({
    url => "http://127.0.0.1:$port/",
    timeout => 60000 * CloudAuth::Test::tf(),
    screenshot => $t->dir . '/page.png',
    steps => [
        { pick => [ "$dir/big.bin" ] },
        # cut, retried by itself, and on again past where the cut was
        { wait => 'seen', file => 'big.bin', state => 'retrying' },
        { wait => 'state', file => 'big.bin', state => 'uploading' },
        { wait => 'progress', file => 'big.bin', at => 0.45 },
        { click => 'pause', file => 'big.bin' },
        { wait => 'state', file => 'big.bin', state => 'paused' },
        { record => 'paused' },
        { click => 'resume', file => 'big.bin' },
        { wait => 'progress', file => 'big.bin', at => 0.7 },
        { reload => 1 },
        { record => 'reloaded' },
        { pick => [ "$dir/big.bin" ] },
        { wait => 'end', n => 1 },
        { record => 'done' },
        # an upload URL the gateway does not know: HEAD 404, start over
        { storage => { file => "$dir/small.bin",
                       url => '/upload/AAAAnotAnUploadOfThisGateway' } },
        { pick => [ "$dir/small.bin" ] },
        { wait => 'end', n => 2 },
        { record => 'end' },
    ],
});

sub browser {
    my ($opt) = @_;

    my $node = `sh -c 'command -v node'`;
    chomp $node;

    if (!$node) {
        fail('node runs the browser test: node is missing; '
             . 'run "tools/deps.sh test"');
        return;
    }

    my $err = $t->dir . '/browser.err';
    my $pid = open my $fh, '-|';
    die "fork: $!" unless defined $pid;

    if (!$pid) {
        open STDERR, '>', $err or die "$err: $!";
        exec 'timeout', 120 * CloudAuth::Test::tf(), $node,
             "$root/t/browser/resume.js", encode_json($opt);
        exit 127;
    }

    my $text = do { local $/; <$fh> };
    close $fh;
    my $rc = $? >> 8;
    my $res = eval { decode_json($text // '') };

    ok($rc == 0 && $res, 'headless chromium ran the page through playwright')
        or diag("t/browser/resume.js exited $rc:\n" . $t->read_file($err)
                . "\nIs the browser there? tools/deps.sh test installs "
                . "Debian's chromium and playwright-core.");

    return $rc == 0 ? $res : undef;
}

if (!$out) {
    done_testing;
    exit;
}

is($out->{status}, 200, 'the page is served at /');

# the cut, and the page's own retry

my @cut = grep { $_->{cut} } CloudAuth::CutProxy->connections($t, 'cut');
is(scalar @cut, 1, 'the relay cut a connection mid-PATCH');

my @states = @{ $out->{states} || [] };
my ($reload) = grep { $states[$_]{reload} } 0 .. $#states;
my @before = map { $_->{state} // () } @states[0 .. ($reload // 0) - 1];

like(join(' ', @before),
     qr/uploading retrying uploading (?:\w+ )*paused (?:\w+ )*uploading/,
     'before the reload: uploading, retrying by itself, uploading, paused, '
     . 'uploading again')
    or diag(join ' ', @before);

# paused

my $p = $out->{records}{paused}{items}[0] || {};
is($p->{state}, 'paused', 'paused');
like($p->{status} // '', qr/^paused at \d+%$/, 'the status says where');
ok(!$p->{pause} && $p->{resume}, 'paused: Resume shown, Pause hidden');
is($out->{records}{paused}{summary}, '0 of 1 uploaded, 1 paused',
   'the summary counts it paused');

# reloaded

is_deeply($out->{records}{reloaded}{items}, [], 'after the reload: no row');
is_deeply($out->{records}{reloaded}{pending}, ['big.bin'],
          'after the reload: big.bin listed as not finished');

# what the requests were

my @req = @{ $out->{requests} || [] };

is(scalar(grep { $_->{method} eq 'POST' && ($_->{length} // '') eq $SIZE }
           @req), 1, 'big.bin: created once, never started over');

# big.bin's requests after the reload (the second GET /) and the pick:
# HEAD (200), then PATCH from where the gateway was (204, the length)
my $gets = 0;
my @after;
for my $r (@req) {
    $gets++ if $r->{method} eq 'GET' && $r->{path} eq '/';
    push @after, $r if $gets == 2 && $r->{method} =~ /^(HEAD|PATCH)$/
                       && $r->{path} !~ /notAnUpload/;
}

my @small_after = grep { $_->{path} =~ /notAnUpload/ } @req;
my ($h1) = @after;
@after = grep { $_->{path} eq $h1->{path} } @after if $h1;

is($h1 && "$h1->{method} $h1->{status}", 'HEAD 200',
   'after the reload and the pick: HEAD on the kept URL');

# then PATCH from the offset the HEAD answered, to the end.  A HEAD may
# come while the gateway still stores what the PATCH the reload broke off
# had brought: its offset is then behind, and the next PATCH gets 409 (the
# gateway sees it at the start, or GCS refuses its first chunk: the other
# request stored more meanwhile), and the page asks again.
my ($ok, $last_head, $steps) = (1, undef, '');
for my $r (@after) {
    if ($r->{method} eq 'HEAD') {
        $ok = 0 unless $r->{status} == 200;
        $last_head = $r;
    } else {
        $ok = 0 unless $last_head && $r->{offset} == $last_head->{answer_offset}
                       && $r->{offset} % $Q == 0 && $r->{offset} > 0
                       && $r->{status} =~ /^(204|409)$/;
        $last_head = undef;
    }
    $steps .= " $r->{method} $r->{status}";
}
ok($ok && $steps =~ / PATCH 204$/ && $after[-1]{answer_offset} == $SIZE,
   'then PATCH from the offset the gateway held, to the end'
   . ' (409 only for an offset from before the broken-off PATCH '
   . 'was stored)')
    or diag(JSON::PP->new->canonical->encode(\@after));

# the stored objects, as the page lists them

my $done = $out->{records}{done}{items}[0] || {};
my $sent = CloudAuth::Upload::sent_of($data{'big.bin'});
my $crc = CloudAuth::Upload::crc32c_b64($sent->{crc32c});
my $url = "https://storage.googleapis.com/$B/uploads/big.bin";

is("$done->{state} $done->{status}", 'done stored', 'big.bin: stored');
is($done->{progress}, 1, 'big.bin: progress bar full');
is_deeply($done->{objects}, [ { bucket => $B, name => 'uploads/big.bin',
                                size => "$SIZE", crc32c => $crc,
                                url => $url } ],
          'big.bin: the page lists bucket, name, size, CRC32C and URL');
CloudAuth::Upload::stored_ok($t, $B, 'uploads/big.bin', $sent, 'big.bin');

my $end = $out->{records}{end};
my $small = $end->{items}[1] || {};
is(join(' ', map { "$_->{method} $_->{status}" } @small_after),
   'HEAD 404', 'small.bin: HEAD on the unknown URL answered 404');
is("$small->{state} $small->{status}", 'done stored',
   'small.bin: started over and stored');
CloudAuth::Upload::stored_ok($t, $B, 'uploads/small.bin',
                             CloudAuth::Upload::sent_of($data{'small.bin'}),
                             'small.bin');
is($end->{summary}, '2 of 2 uploaded', 'the summary at the end');
is_deeply($end->{pending}, [], 'nothing left unfinished');

is(scalar(my @o = CloudAuth::FakeGCS->objects($t)), 2,
   'two objects in the bucket');

# what was sent more than once: what was in flight at the cut and at the
# reload (and at the pause), and less than 256 KiB below the last mark
my $patched = 0;
$patched += $_->{up} for CloudAuth::CutProxy->connections($t, 'cut');
diag(sprintf 'big.bin: %.2f MiB went through the relay for %.2f MiB',
     $patched / $MiB, ($SIZE + length $data{'small.bin'}) / $MiB);

is(join("\n", grep { !/Failed to load resource/ } @{ $out->{console} || [] }),
   '', 'no script error in the page');

$t->check_log_ok;

done_testing;
