#!/usr/bin/perl

# The upload page in a real browser: nginx serves html/upload.html at / and
# a resumable=on cloudauth_gcs_upload location at /upload/ against the fake
# GCS; Debian's headless Chromium, driven by playwright-core
# (t/browser/upload.js), picks three files through the keyboard-opened file
# chooser (one empty), then drops two more (one a name already stored:
# overwrite=off answers 409, which the page must show with the server's
# reason).  The page sends them by tus (POST, PATCH), the empty one as a
# plain PUT.  What landed in the fake GCS is compared byte for byte and by
# CRC32C with what was sent, and with what the page listed.  The same page
# served at /plain/, whose upload/ has no resumable=on, sends a file as a
# single multipart POST.  The browser not running is a failure, never a
# skip: tools/deps.sh test installs chromium and playwright-core.
# TEST_NGINX_LEAVE=1 keeps the test directory, with page.png, the page as it
# ended.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Path qw(make_path);
use JSON::PP;
use Test::More;
use Time::HiRes qw(time);

use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $started = time;
my $root = $CloudAuth::Test::ROOT;
my $B = 'test-bucket';

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

# the page from a copy in the test directory: the workers (nobody) may not
# be able to enter the checkout (a clone in /root)
my $html = $t->copy_in('html');

$t->run(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 20m;

        location / {
            root $html;
            index upload.html;
        }

        location /upload/ {
            cloudauth_gcs_upload google bucket=$B chunk_size=256k
                resumable=on object=uploads/\$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /plain/ {
            alias $html/;
            index upload.html;
        }

        location /plain/upload/ {
            cloudauth_gcs_upload google bucket=$B chunk_size=256k
                object=plain/\$cloudauth_filename
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

# files of distinct random bytes, sizes that are no multiple of 256 KiB,
# each larger than one chunk

sub random_bytes {
    my ($n) = @_;
    open my $fh, '<:raw', '/dev/urandom' or die "urandom: $!";
    my $d = '';
    read $fh, $d, $n;
    return $d;
}

my $dir = $t->dir . '/files';
make_path("$dir/again");

my %data = (
    'a.bin' => random_bytes(300 * 1024 + 17),
    'b.bin' => random_bytes(700 * 1024 + 3),
    'c.txt' => join('', map { "line $_ of a dropped file\n" } 1 .. 2000),
    'again/a.bin' => random_bytes(1000),
    'empty.bin' => '',
);

for my $f (keys %data) {
    $t->write_file("$dir/$f", $data{$f});
}

# the browser

my $out = browser({
    url => 'http://127.0.0.1:' . $t->port('nginx') . '/',
    steps => [ { pick => [ "$dir/a.bin", "$dir/b.bin", "$dir/empty.bin" ] },
               { drop => [ "$dir/c.txt", "$dir/again/a.bin" ] } ],
    screenshot => $t->dir . '/page.png',
    timeout => 20000 * CloudAuth::Test::tf(),
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
        exec 'timeout', 60 * CloudAuth::Test::tf(), $node, "$root/t/browser/upload.js",
             encode_json($opt);
        exit 127;
    }

    my $text = do { local $/; <$fh> };
    close $fh;
    my $rc = $? >> 8;

    my $res = eval { decode_json($text // '') };

    ok($rc == 0 && $res, 'headless chromium ran the page through playwright')
        or diag("t/browser/upload.js exited $rc:\n" . $t->read_file($err)
                . "\nIs the browser there? tools/deps.sh test installs "
                . "Debian's chromium and playwright-core.");

    return $rc == 0 ? $res : undef;
}

if (!$out) {
    done_testing;
    exit;
}

is($out->{status}, 200, 'the page is served at /');
is($out->{title}, 'Upload to Cloud Storage', 'it is the upload page');
is($out->{focused}, 'files', 'the keyboard reaches the file picker');

my @items = @{ $out->{items} || [] };
is(scalar @items, 5, 'five uploads listed');
is(join(' ', map { "$_->{file}:$_->{state}" } @items),
   'a.bin:done b.bin:done empty.bin:done c.txt:done a.bin:error',
   'four stored, the second a.bin refused');

# what the page listed, what GCS has

my %type = ('c.txt' => 'text/plain');

for my $i (0 .. 3) {
    my $it = $items[$i] || {};
    my $file = $it->{file} // '?';
    my $data = $data{$file} // '';
    my $name = "uploads/$file";
    my ($o) = @{ $it->{objects} || [] };
    my $sent = CloudAuth::Upload::sent_of($data);
    my $crc = CloudAuth::Upload::crc32c_b64($sent->{crc32c});
    my $url = "https://storage.googleapis.com/$B/$name";

    is(scalar @{ $it->{objects} || [] }, 1, "$file: one object listed");
    is($it->{status}, 'stored', "$file: status stored");
    is($it->{progress}, 1, "$file: progress bar full");
    is_deeply($o, { bucket => $B, name => $name, size => length($data) . '',
                    crc32c => $crc, url => $url, href => $url },
              "$file: the page lists bucket, name, size, CRC32C and URL");

    my $g = CloudAuth::Upload::stored_ok($t, $B, $name, $sent, $file);
    is($g && $g->{meta}{contentType}, $type{$file}, "$file: content type")
        if $type{$file};
}

my $dup = $items[4] || {};
like($dup->{error} // '', qr/\S.*\(409\)/,
     'the refused upload shows the server\'s message and 409');
is_deeply($dup->{objects}, [], 'the refused upload lists no object');
CloudAuth::Upload::stored_ok($t, $B, 'uploads/a.bin',
                             CloudAuth::Upload::sent_of($data{'a.bin'}),
                             'a.bin, after the refused one');
is(scalar(my @o = CloudAuth::FakeGCS->objects($t)), 4,
   'four objects in the bucket');

is_deeply($out->{steps}, ['3 of 3 uploaded', '4 of 5 uploaded, 1 failed'],
          'the summary after each step');

# how they went: tus for the files, a PUT for the empty one
my $access = $t->access_log;
my $n_post = () = $access =~ m{"POST /upload/ HTTP}g;
my %patched = map { $_ => 1 } $access =~ m{"PATCH (/upload/\S+) HTTP}g;
my %by;
$by{$1}++ while $access =~ m{"(PUT /upload/\S*) HTTP}g;

cmp_ok($n_post, '>=', 4, 'tus: a creation POST for each non-empty file '
                         . '(the refused one too)');
is(scalar keys %patched, 3, 'tus: PATCHes to three upload URLs');
is($by{'PUT /upload/empty.bin'}, 1, 'the empty file: one PUT');
is(join("\n", grep { !/status of 409/ } @{ $out->{console} || [] }), '',
   'no script error in the page');

my @chunks = grep { $_->{method} eq 'PUT' && ($_->{length} // 0) > 0 }
             CloudAuth::FakeGCS->requests($t);
cmp_ok(scalar @chunks, '>=', 5,
       'the files went to GCS in 256 KiB chunks, streamed');

# the page where the location is not resumable: one multipart POST

my $plain = browser({
    url => 'http://127.0.0.1:' . $t->port('nginx') . '/plain/',
    steps => [ { pick => [ "$dir/b.bin" ] } ],
    timeout => 20000 * CloudAuth::Test::tf(),
});

my $pi = $plain && $plain->{items}[0] || {};
is("$pi->{file}:$pi->{state}", 'b.bin:done',
   'not resumable: the page stores the file');
is(($pi->{objects}[0] || {})->{name}, 'plain/b.bin',
   '... where that location puts it');
CloudAuth::Upload::stored_ok($t, $B, 'plain/b.bin',
                             CloudAuth::Upload::sent_of($data{'b.bin'}),
                             'not resumable');
like($t->access_log, qr{"POST /plain/upload/ HTTP/1\.1" 201},
     '... by one POST');
unlike($t->access_log, qr{"PATCH /plain/}, '... no PATCH');

$t->check_log_ok;

cmp_ok(time - $started, '<', 40 * CloudAuth::Test::tf(), 'within 40 s');

done_testing;
