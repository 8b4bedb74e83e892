#!/usr/bin/perl

# Token injection and uploads over HTTP/3.  nginx listens with "quic" and
# "ssl" on one port (the test CA's certificate), advertises it in Alt-Svc,
# and Debian's headless Chromium, driven by playwright-core
# (t/browser/upload.js), is forced onto QUIC for that origin
# (--origin-to-force-quic-on with the numeric address: localhost would try
# ::1 first) and takes the certificate by its key's SHA-256
# (--ignore-certificate-errors-spki-list).  From the page at
# https://127.0.0.1:PORT/ it proxies a GET with the bearer, PUTs 3 MiB by
# fetch() to a resumable=on location with chunk_size=256k (the body read
# under back-pressure: HTTP/3's flow control must move on each time GCS
# takes a chunk), POSTs a multipart form, and the upload page itself sends
# files by tus (POST, PATCH); the page at /plain/ sends one by a multipart
# POST.  A page of another origin (http://127.0.0.1:SITE/) is refused its
# uploads, a 3 MiB form POST answered 403 at once, the body not waited for,
# and a PUT's preflight refused.  The access log (with $server_protocol and
# $http3) shows each request went over HTTP/3.  What landed in the fake GCS
# is compared byte for byte with what was sent.
#
# It needs an nginx built with --with-http_v3_module (nginx 1.25 and newer):
# with another it is skipped and says why.  The browser not running is a
# failure, never a skip: tools/deps.sh test installs chromium and
# playwright-core.  TEST_NGINX_LEAVE=1 keeps the test directory.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time);

use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $root = $CloudAuth::Test::ROOT;
my $B = 'test-bucket';

# the nginx under test must have HTTP/3

my $binary = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $v = `$binary -V 2>&1`;
my ($version) = $v =~ m{nginx version: nginx/(\S+)};

plan skip_all => "nginx $binary (" . ($version // 'version unknown')
                 . ") has no HTTP/3: it was built without "
                 . "--with-http_v3_module (nginx 1.25 and newer have it)"
    unless $v =~ /--with-http_v3_module/;

my $started = time;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

my $html = $t->copy_in('html');

sub random_bytes {
    my ($n) = @_;
    open my $fh, '<:raw', '/dev/urandom' or die "urandom: $!";
    my $d = '';
    read $fh, $d, $n;
    return $d;
}

my $dir = $t->dir . '/files';
mkdir $dir or die "$dir: $!";

my %data = (
    'big.bin' => random_bytes(3 * 1024 * 1024),
    'form.bin' => random_bytes(600 * 1024 + 11),
    'a.bin' => random_bytes(300 * 1024 + 17),
    'b.bin' => random_bytes(700 * 1024 + 3),
    'evil.bin' => random_bytes(1024 * 1024 + 5),
);

$t->write_file("$dir/$_", $data{$_}) for keys %data;

my $port = $t->port('nginx');
my $origin = "https://127.0.0.1:$port";

$t->run(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    log_format h3 '\$request_method \$request_uri \$server_protocol '
                  '"\$http3" \$status \$request_length '
                  '"\$sent_http_access_control_allow_origin"';

    server {
        listen 127.0.0.1:%%PORT%% ssl;
        listen 127.0.0.1:%%PORT%% quic reuseport;

        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;

        add_header Alt-Svc 'h3=":%%PORT%%"; ma=60' always;
        access_log %%TESTDIR%%/h3.log h3;

        client_max_body_size 20m;

        location / {
            root $html;
            index upload.html;
        }

        location /files/ {
            alias $dir/;
        }

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
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

    # another site: its pages must not upload to the one above
    server {
        listen 127.0.0.1:%%PORT_SITE%%;

        location / {
            root $html;
            index upload.html;
        }

        location /files/ {
            alias $dir/;
        }
    }
EOF

my $site = 'http://127.0.0.1:' . $t->port('site');

# the certificate's key, as Chromium takes it

my $spki = `openssl x509 -in ${\ $t->dir}/server.crt -pubkey -noout \\
            | openssl pkey -pubin -outform der \\
            | openssl dgst -sha256 -binary | base64`;
chomp $spki;
like($spki, qr{^[A-Za-z0-9+/]{43}=$}, 'the SHA-256 of the server key');

my $bound = 20000 * CloudAuth::Test::tf();

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
        exec 'timeout', 60 * CloudAuth::Test::tf(), $node,
             "$root/t/browser/upload.js",
             encode_json({ quic => "127.0.0.1:$port", spki => $spki,
                           timeout => $bound, %$opt });
        exit 127;
    }

    my $text = do { local $/; <$fh> };
    close $fh;
    my $rc = $? >> 8;

    my $res = eval { decode_json($text // '') };

    ok($rc == 0 && $res, "headless chromium ran $opt->{url}")
        or diag("t/browser/upload.js exited $rc:\n" . $t->read_file($err)
                . "\nIs the browser there? tools/deps.sh test installs "
                . "Debian's chromium and playwright-core.");

    return $rc == 0 ? $res : undef;
}

# how nginx saw the request: METHOD URI PROTOCOL "$http3" STATUS LENGTH
# "Access-Control-Allow-Origin"
sub logged {
    my ($method, $uri) = @_;
    return grep { /^\Q$method $uri\E / } split /\n/, $t->read_file('h3.log');
}

sub over_h3_ok {
    my ($method, $uri, $status, $name) = @_;
    my @l = logged($method, $uri);
    ok(@l && !grep({ !m{^\S+ \S+ HTTP/3\.0 "h3" \Q$status\E } } @l),
       "$name: $method $uri went over HTTP/3, $status")
        or diag(join("\n", @l) || 'not in the access log');
}

# the page over HTTP/3: injection, a PUT, a form, then tus by the page

my $out = browser({
    url => "$origin/",
    fetches => [
        { url => '/api/x' },
        { url => '/upload/big.bin', method => 'PUT', src => "/files/big.bin" },
        { url => '/upload/big.bin?again', method => 'PUT',
          src => "/files/evil.bin" },
        { url => '/plain/upload/', method => 'POST', src => "/files/form.bin",
          form => 'file' },
    ],
    steps => [ { pick => [ "$dir/a.bin", "$dir/b.bin" ] } ],
    screenshot => $t->dir . '/page.png',
});

my ($get, $put, $again, $form) = @{ $out && $out->{fetches} || [] };
$_ //= {} for $get, $put, $again, $form;

is($out && $out->{status}, 200, 'the page is served over HTTP/3');
is($out && $out->{title}, 'Upload to Cloud Storage', 'it is the upload page');

my %proto = map { $_->{url} => $_->{protocol} }
            @{ $out && $out->{protocols} || [] };
is($proto{"$origin/"}, 'h3', 'the browser went by h3');
over_h3_ok('GET', '/', 200, 'the page');

# token injection

my ($token) = $t->issued_tokens;
is($get->{status}, 200, 'GET /api/x: 200');
ok($token && ($get->{headers}{'x-echo-authorization'} // '')
             eq "Bearer $token",
   'GET /api/x: proxied with the bearer');
over_h3_ok('GET', '/api/x', 200, 'injection');

# a 3 MiB PUT, read under back-pressure

is($put->{status}, 201, 'PUT 3 MiB by fetch(): 201')
    or diag(encode_json({ map { $_ => $put->{$_} }
                          qw(status error aborted ms body) }));
my $po = eval { decode_json($put->{body} // '') } || {};
is($po->{name}, 'uploads/big.bin', 'PUT: the object in the answer');
CloudAuth::Upload::stored_ok($t, $B, 'uploads/big.bin',
                             CloudAuth::Upload::sent_of($data{'big.bin'}),
                             'PUT 3 MiB');
over_h3_ok('PUT', '/upload/big.bin', 201, 'PUT');

my ($session) = grep { $_->{name} eq 'uploads/big.bin' }
                CloudAuth::FakeGCS->sessions($t);
my $sid = $session ? $session->{id} : 'none';
cmp_ok(scalar(grep { $_->{method} eq 'PUT' && ($_->{length} // 0) > 0
                     && $_->{uri} =~ /[?&]upload_id=\Q$sid\E(&|$)/ }
              CloudAuth::FakeGCS->requests($t)),
       '>=', 12, 'PUT: to GCS in 256 KiB chunks, streamed');

# the same name again: GCS refuses it (overwrite=off) while the body comes

is($again->{status}, 409, 'PUT 1 MiB to a stored name: 409, not a hang')
    or diag(encode_json({ map { $_ => $again->{$_} }
                          qw(status error aborted ms body) }));
CloudAuth::Upload::stored_ok($t, $B, 'uploads/big.bin',
                             CloudAuth::Upload::sent_of($data{'big.bin'}),
                             '... the stored one kept');
over_h3_ok('PUT', '/upload/big.bin?again', 409, 'PUT to a stored name');

# a form POST

is($form->{status}, 201, 'form POST by fetch(): 201')
    or diag(encode_json({ map { $_ => $form->{$_} }
                          qw(status error aborted ms body) }));
CloudAuth::Upload::stored_ok($t, $B, 'plain/form.bin',
                             CloudAuth::Upload::sent_of($data{'form.bin'}),
                             'form POST');
over_h3_ok('POST', '/plain/upload/', 201, 'form POST');

# tus, by the upload page

my @items = @{ $out && $out->{items} || [] };
is(join(' ', map { "$_->{file}:$_->{state}" } @items),
   'a.bin:done b.bin:done', 'the page: both files stored')
    or diag(encode_json(\@items));
is_deeply($out && $out->{steps}, ['2 of 2 uploaded'], 'the page: summary');

for my $f (qw(a.bin b.bin)) {
    CloudAuth::Upload::stored_ok($t, $B, "uploads/$f",
                                 CloudAuth::Upload::sent_of($data{$f}),
                                 "tus $f");
}

over_h3_ok('POST', '/upload/', 201, 'tus creation');
my @patch = grep { m{^PATCH /upload/\S+ } } split /\n/,
            $t->read_file('h3.log');
ok(@patch >= 2 && !grep({ !m{ HTTP/3\.0 "h3" 204 } } @patch),
   'tus: the PATCHes went over HTTP/3, 204')
    or diag(join "\n", @patch);
is(join("\n", grep { !/status of 409/ } @{ $out && $out->{console} || [] }),
   '', 'no script error in the page');

# the page where the location is not resumable: one multipart POST

my $plain = browser({
    url => "$origin/plain/",
    steps => [ { pick => [ "$dir/b.bin" ] } ],
});

my $pi = $plain && $plain->{items}[0] || {};
is(($pi->{file} // '') . ':' . ($pi->{state} // ''), 'b.bin:done',
   'the page at /plain/ stores the file');
CloudAuth::Upload::stored_ok($t, $B, 'plain/b.bin',
                             CloudAuth::Upload::sent_of($data{'b.bin'}),
                             'the page at /plain/');
is(scalar(logged('POST', '/plain/upload/')), 2,
   '... by one more POST');
over_h3_ok('POST', '/plain/upload/', 201, 'the page at /plain/');

# another site's page: refused, at once

my $evil = browser({
    url => "$site/",
    fetches => [
        { url => "$origin/upload/?site=other", method => 'POST',
          mode => 'no-cors', src => "/files/evil.bin", form => 'file' },
        { url => "$origin/upload/?site=raw", method => 'POST',
          mode => 'no-cors', src => "/files/evil.bin" },
        { url => "$origin/upload/evil.bin", method => 'PUT',
          src => "/files/evil.bin" },
    ],
});

my ($csrf, $raw, $cors) = @{ $evil && $evil->{fetches} || [] };
$_ //= {} for $csrf, $raw, $cors;

ok(!$csrf->{error} && ($csrf->{type} // '') eq 'opaque',
   'cross-site form POST: answered')
    or diag(encode_json($csrf));
over_h3_ok('POST', '/upload/?site=other', 403, 'cross-site form POST');
ok(!$raw->{error} && ($raw->{type} // '') eq 'opaque',
   'cross-site POST of 1 MiB: answered')
    or diag(encode_json($raw));
over_h3_ok('POST', '/upload/?site=raw', 403, 'cross-site POST');
like($t->error_log, qr/refused, Origin "\Q$site\E" is neither/,
     '... refused for its Origin');
ok($cors->{error} && !$cors->{aborted},
   'cross-site PUT: the browser refuses it, at once')
    or diag(encode_json($cors));
over_h3_ok('OPTIONS', '/upload/evil.bin', 204, 'cross-site PUT preflight');
like(join('', logged('OPTIONS', '/upload/evil.bin')), qr/ "-"$/,
     '... answered with no Access-Control-Allow-Origin');
is(scalar(logged('PUT', '/upload/evil.bin')), 0, '... no PUT follows');
ok(!CloudAuth::FakeGCS->object($t, $B, 'uploads/evil.bin'),
   'nothing of the other site stored');

is(scalar(my @o = CloudAuth::FakeGCS->objects($t)), 5,
   'five objects in the bucket');

$t->check_log_ok;

cmp_ok(time - $started, '<', 90 * CloudAuth::Test::tf(), 'within 90 s');

done_testing;
