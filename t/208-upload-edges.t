#!/usr/bin/perl

# The upload path's edges, each of which was a defect once:
#
# - an "if" or "limit_except" block inside an upload location (and inside a
#   "cloudauth" one) works exactly as the location: PUT, form POST and tus
#   creation 201; the injected token reaches the upstream (it crashed a
#   worker, answered 500, or turned tus off);
# - a body an IETF resumable-upload client marks as a part
#   ("Upload-Complete: ?0", "Upload-Incomplete: ?1") is refused on a
#   location without resumable=on, with any method and interop version, and
#   nothing is stored (it became a finished, truncated object); on a
#   resumable one it is the draft's part (interop versions served) or a
#   refusal, never a finished object;
# - object names from outside reach the error log printable only (escape
#   sequences went to it raw);
# - max_size= is the limit a client meets, not client_max_body_size
#   (a 2 MiB PUT got 413 from nginx while OPTIONS advertised 16 MiB);
# - the uploads a killed worker held no longer count as active;
# - a PATCH that meets the object its client finished meanwhile is a 409,
#   not a failure logged as an error.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
CloudAuth::Upload::start_gcs($t);

my $B = 'test-bucket';

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /if/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;

            if ($http_x_trace) {
                set $trace 1;
            }
        }

        location /lx/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                endpoint=https://127.0.0.1:%%PORT_GCS%%;

            limit_except GET {
                allow 127.0.0.1;
                deny all;
            }
        }

        location /big/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                max_size=16m chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /files/ {
            cloudauth_gcs_upload google bucket=test-bucket resumable=on
                chunk_size=256k endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /single/ {
            cloudauth_gcs_upload google bucket=test-bucket
                chunk_size=256k endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;

            if ($http_x_trace) {
                set $trace 1;
            }

            limit_except GET POST {
                deny all;
            }
        }

        location = /status {
            cloudauth_status;
        }
    }
EOF

my %TUS = ('Tus-Resumable' => '1.0.0');

sub req {
    my ($method, $path, %h) = @_;
    return $t->http_get($path, -method => $method, %h);
}

sub form {
    my ($path, $name, $data, %h) = @_;
    my $b = 'xYzBoundary';
    my $body = "--$b\r\nContent-Disposition: form-data; name=\"f\"; "
               . "filename=\"$name\"\r\nContent-Type: text/plain\r\n\r\n"
               . "$data\r\n--$b--\r\n";
    my ($r) = CloudAuth::Upload::upload($t, $path, method => 'POST',
        data => $body, headers => {
            'Content-Type' => "multipart/form-data; boundary=$b", %h });
    return $r;
}

sub stored { CloudAuth::FakeGCS->object($t, $B, $_[0]) }

sub gcs_requests { scalar(my @r = CloudAuth::FakeGCS->requests($t)) }

###############################################################################
# "if" and "limit_except" inside an upload location

for my $loc ('if', 'lx') {
    for my $trace (0, 1) {
        my %h = $trace ? ('X-Trace' => 'on') : ();
        my $what = "$loc" . ($trace ? ', the block taken' : '');

        my ($r) = CloudAuth::Upload::put($t, "/$loc/put-$loc-$trace.bin",
                                         "put $what", headers => \%h);
        is($r->{status}, 201, "$what: PUT 201");
        is(stored("put-$loc-$trace.bin")->{data}, "put $what",
           "$what: PUT stored");

        $r = form("/$loc/", "form-$loc-$trace.txt", "form $what", %h);
        is($r->{status}, 201, "$what: form POST 201");
        is(stored("form-$loc-$trace.txt")->{data}, "form $what",
           "$what: form stored");

        $r = req('POST', "/$loc/", %TUS, %h, 'Upload-Length' => 3,
                 'Upload-Metadata' => 'filename '
                                      . encode_base64("tus-$loc-$trace", ''),
                 'Content-Type' => 'application/offset+octet-stream',
                 -body => 'tus');
        is($r->{status}, 201, "$what: tus creation 201");
        like($r->{headers}{location} // '', qr{^/$loc/\S+$},
             "$what: tus Location");
        is(stored("tus-$loc-$trace")->{data}, 'tus', "$what: tus stored");

        $r = req('OPTIONS', "/$loc/", %h);
        is($r->{headers}{'tus-version'}, '1.0.0', "$what: tus is on");
    }
}

# and inside a token location

for my $trace (0, 1) {
    my %h = $trace ? ('X-Trace' => 'on') : ();
    my $r = req('GET', '/api/x', %h, Authorization => 'Bearer client');
    is($r->{status}, 200, "cloudauth, if $trace: 200");
    like($r->{headers}{'x-echo-authorization'} // '', qr/^Bearer ya29\./,
         "cloudauth, if $trace: the injected token");
}

my $r = req('PUT', '/api/y', Authorization => 'Bearer client',
            -body => 'x');
is($r->{status}, 403, 'cloudauth, limit_except: a PUT is denied');
$r = req('POST', '/api/y', Authorization => 'Bearer client',
         'X-Trace' => 1, -body => 'x');
like($r->{headers}{'x-echo-authorization'} // '', qr/^Bearer ya29\./,
     'cloudauth, limit_except and if: the injected token');

###############################################################################
# a body marked as a part of an IETF draft upload, nothing stored as an
# object: refused on a location without resumable=on; on a resumable one
# (t/223-ietf.t) the draft's part of an upload for an interop version
# served, refused for none or another

my $n = gcs_requests();

my @parts = (['Upload-Complete' => '?0', undef, 400],
             ['Upload-Complete' => '?0', 6, 201],
             ['Upload-Incomplete' => '?1', 3, 201],
             ['Upload-Incomplete' => '?1', 5, 400],
             ['Upload-Complete' => 'nonsense', 6, 400]);

for my $c (@parts) {
    my ($hname, $hval, $interop) = @$c;
    my %h = ($hname => $hval);
    $h{'Upload-Draft-Interop-Version'} = $interop if defined $interop;
    my $what = "$hname: $hval, interop " . ($interop // 'none');

    for my $m ('POST', 'PUT', 'PATCH') {
        my ($r) = CloudAuth::Upload::upload($t, '/single/part.bin',
                                            method => $m, size => 300 * 1024,
                                            headers => \%h);
        is($r->{status}, 501, "$what, $m: 501");
        like($r->{json}{error}{message} // '', qr/Upload-Complete/,
             "$what, $m: the reason");
    }
}

ok(!stored('part.bin'), 'a part is not stored as an object');
is(gcs_requests(), $n, 'no GCS request for a part');

for my $c (@parts) {
    my ($hname, $hval, $interop, $status) = @$c;
    my %h = ($hname => $hval);
    $h{'Upload-Draft-Interop-Version'} = $interop if defined $interop;
    my $what = "resumable=on, $hname: $hval, interop " . ($interop // 'none');

    for my $m ('POST', 'PUT', 'PATCH') {
        my ($r) = CloudAuth::Upload::upload($t, '/files/part.bin',
                                            method => $m, size => 300 * 1024,
                                            headers => \%h);
        is($r->{status}, $status, "$what, $m: $status");

        if ($status == 201) {
            is($r->{headers}{'upload-offset'}, 256 * 1024,
               "$what, $m: a part, GCS holds its 256 KiB");
        }
    }
}

ok(!stored('part.bin'), 'resumable=on: a part is not stored as an object');

($r) = CloudAuth::Upload::upload($t, '/files/whole.bin', size => 300 * 1024,
                                 headers => { 'Upload-Complete' => '?1' });
is($r->{status}, 201, 'Upload-Complete: ?1 is a whole body: 201');
($r) = CloudAuth::Upload::upload($t, '/files/whole2.bin', size => 1000,
                                 headers => { 'Upload-Incomplete' => '?0' });
is($r->{status}, 201, 'Upload-Incomplete: ?0 is a whole body: 201');

###############################################################################
# names from outside reach the log printable

($r) = CloudAuth::Upload::put($t, '/files/a%1B%5B2J%1B%5B31mFAKE%20LINE',
                              'esc');
is($r->{status}, 201, 'a name with escape sequences: 201');
ok(stored("a\e[2J\e[31mFAKE LINE"), 'stored under its name');

($r) = CloudAuth::Upload::put($t, '/files/x/..%0A/y', 'bad');
is($r->{status}, 400, 'a bad object name with a newline: 400');

$r = req('POST', '/files/', %TUS, 'Upload-Length' => 10,
         'Upload-Metadata' => 'filename ' . encode_base64("t\e[1mus\r\nX", ''),
         -body => '');
is($r->{status}, 201, 'tus: a file name with control characters: 201');
$r = req('DELETE', $r->{headers}{location}, %TUS);
is($r->{status}, 204, 'tus: terminated');

($r) = CloudAuth::Upload::put($t, '/files/q', 'x',
    headers => { Origin => "http://evil.example\e[31mFAKE\"" });
is($r->{status}, 403, 'an Origin with an escape sequence: 403');

($r) = CloudAuth::Upload::put($t, '/files/quote%22%5C', 'q');
is($r->{status}, 201, 'a name with a quote and a backslash: 201');

# nginx's own debug lines show the request as it came; ours never do
my $log = join "\n", grep { m{^\d{4}/\d\d/\d\d } && !/\[debug\]/
                            || /\[debug\] .*cloudauth: / }
                       split /\n/, $t->error_log;
unlike($log, qr/[\x00-\x08\x0b-\x1f\x7f]/, 'no control character in the log');
like($log, qr/\\x1b\[2J/, 'the escape character is shown escaped');
like($log, qr/terminated/, 'the termination is logged');
like($log, qr/stored "quote\\x22\\x5c"/,
     'a quote and a backslash in a name are shown escaped');
like($log, qr/Origin "http:\/\/evil\.example\\x1b\[31mFAKE\\x22"/,
     'so is an Origin');

###############################################################################
# max_size= is the limit, also above client_max_body_size (1m by default)

$r = req('OPTIONS', '/big/');
is($r->{headers}{'tus-max-size'}, 16 * 1024 * 1024, 'Tus-Max-Size: 16m');

my $M2 = 2 * 1024 * 1024;
my $sent;
($r, $sent) = CloudAuth::Upload::upload($t, '/big/two.bin', size => $M2);
is($r->{status}, 201, 'a 2 MiB PUT under max_size=16m: 201');
CloudAuth::Upload::stored_ok($t, $B, 'two.bin', $sent, '2 MiB PUT');

($r, $sent) = CloudAuth::Upload::upload($t, '/big/two-chunked.bin',
                                        size => $M2, chunked => 1);
is($r->{status}, 201, 'a 2 MiB chunked PUT: 201');

$r = req('POST', '/big/', %TUS, 'Upload-Length' => $M2,
         'Upload-Metadata' => 'filename ' . encode_base64('patch.bin', ''),
         -body => '');
is($r->{status}, 201, 'tus creation of 2 MiB');
my $url = $r->{headers}{location};
($r, $sent) = CloudAuth::Upload::upload($t, $url, method => 'PATCH',
    size => $M2, headers => { %TUS, 'Upload-Offset' => 0,
        'Content-Type' => 'application/offset+octet-stream' });
is($r->{status}, 204, 'a 2 MiB tus PATCH: 204');
is($r->{headers}{'upload-offset'}, $M2, 'all of it');
CloudAuth::Upload::stored_ok($t, $B, 'patch.bin', $sent, '2 MiB PATCH');

($r) = CloudAuth::Upload::upload($t, '/big/over.bin',
                                 size => 16 * 1024 * 1024 + 1);
is($r->{status}, 413, 'over max_size: 413');
like($r->{json}{error}{message} // '', qr/max_size/, '413: our reason');

# refusals before the body invite no body: no "100 Continue"

for my $c (['PUT', '/big/over2.bin', {}],
           ['POST', '/big/', { %TUS, 'Upload-Length' => 17 * 1024 * 1024,
                               'Content-Type' =>
                                   'application/offset+octet-stream' }],
           ['POST', '/big/', { %TUS, 'Upload-Defer-Length' => 1,
                               'Content-Type' =>
                                   'application/offset+octet-stream' }])
{
    my ($m, $path, $h) = @$c;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port('nginx'))
        or die "connect: $!";
    print $s "$m $path HTTP/1.1\r\nHost: localhost\r\n"
             . "Content-Length: 17000000\r\nExpect: 100-continue\r\n"
             . join('', map { "$_: $h->{$_}\r\n" } sort keys %$h)
             . "Connection: close\r\n\r\n";
    my $in = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(10 * $t->tf)) {
        my $n = sysread $s, my $buf, 4096;
        last unless $n;
        $in .= $buf;
        last if $in =~ /\r\n\r\n.*"message"/s;
    }
    close $s;
    my $what = "$m $path" . ($h->{'Upload-Defer-Length'} ? ', deferred' : '');
    like($in, qr{^HTTP/1\.1 413}, "$what over max_size with Expect: 413");
    unlike($in, qr{100 Continue}, "$what: no 100 Continue");
}

###############################################################################
# a PATCH that meets the object its client finished meanwhile

$r = req('POST', '/files/', %TUS, 'Upload-Length' => 1024 * 1024,
         'Upload-Metadata' => 'filename ' . encode_base64('raced.bin', ''),
         -body => '');
$url = $r->{headers}{location};

my %PATCH = (%TUS, 'Upload-Offset' => 0,
             'Content-Type' => 'application/offset+octet-stream');
my $second;
($r) = CloudAuth::Upload::upload($t, $url, method => 'PATCH',
    size => 1024 * 1024, piece => 16384, headers => \%PATCH,
    during => sub {
        # the first PATCH has sent GCS nothing yet: a second one does it all
        ($second) = CloudAuth::Upload::upload($t, $url, method => 'PATCH',
            size => 1024 * 1024, headers => \%PATCH) unless $second;
    });
is($second->{status}, 204, 'the second PATCH completes the upload');
is($r->{status}, 409, 'the first meets the finished object: 409');
($sent) = CloudAuth::Upload::sent_of(CloudAuth::Upload::bytes_at(0,
                                                                1024 * 1024));
CloudAuth::Upload::stored_ok($t, $B, 'raced.bin', $sent,
                             'the raced upload');
unlike($t->error_log, qr/\[error\].*raced\.bin/,
       'no error logged for the raced PATCH');

###############################################################################
# the uploads of a killed worker no longer count as active

sub active {
    my $r = $t->http_get('/status');
    my $j = eval { JSON::PP->new->decode($r->{body}) } or return -1;
    return $j->{uploads}{active};
}

my @held;
for my $i (1 .. 4) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port('nginx'))
        or die "connect: $!";
    print $s "PUT /big/held-$i HTTP/1.1\r\nHost: localhost\r\n"
             . "Content-Length: 10000000\r\n\r\n" . ('x' x 100000);
    push @held, $s;
}

ok($t->wait_for(sub { active() == 4 }, 10), 'four uploads active');

my @old = $t->worker_pids;
kill 'KILL', @old;

ok($t->wait_for(sub {
    my @w = $t->worker_pids;
    @w == 2 && !grep { my $p = $_; grep { $_ == $p } @old } @w;
}, 10), 'the master started new workers');

ok($t->wait_for(sub { active() == 0 }, 10),
   'the killed workers\' uploads no longer count as active')
    or diag 'active: ' . active();

close $_ for @held;

my @bad = grep { !/exited on signal 9/ } $t->check_log;
$t->stop;
is(join("\n", @bad), '', 'no alert besides the killed workers');

done_testing;
