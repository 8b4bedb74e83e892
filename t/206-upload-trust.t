#!/usr/bin/perl

# cloudauth_gcs_upload and what it must not trust: cross-site requests (a
# form or text/plain POST needs no preflight, so any page a user visits
# could store objects), GCS's error words (they go to the log, not to the
# client), a Content-MD5 that would not decode to 16 bytes, a request whose
# body another location already discarded (client_max_body_size, then
# error_page into the upload location), and session URIs off the endpoint's
# origin.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;
use CloudAuth::FakeGCS;
use CloudAuth::Upload;

my $t = CloudAuth::Test->new;
my $gcs = CloudAuth::Upload::start_gcs($t);

my $B = 'test-bucket';
my $dir = $t->dir;

# a server session URIs must never lead to: it logs what reaches it

$t->start_fake(evil => tls => { cert => "$dir/server.crt",
                                key => "$dir/server.key" },
    handler => sub {
        my ($req) = @_;
        open my $fh, '>>', "$dir/evil.log" or die "evil.log: $!";
        print $fh "$req->{method} $req->{uri}\n";
        close $fh;
        return { status => 308 };
    });

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT_TLS%% ssl;
        listen 127.0.0.1:%%PORT_H2%% %%HTTP2%%;
        %%HTTP2_ON%%

        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;

        client_max_body_size 20m;

        location /up/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%
                cors=https://app.example;
        }

        location /any/ {
            cloudauth_gcs_upload google bucket=test-bucket overwrite=on
                endpoint=https://127.0.0.1:%%PORT_GCS%% cors=*;
        }

        location /chunks/ {
            cloudauth_gcs_upload google bucket=test-bucket chunk_size=256k
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }

        # the body is discarded for the 413, then the request goes on to
        # the upload location, still a POST
        location /small/ {
            client_max_body_size 1k;
            error_page 413 = @upload;
        }

        # an error_page alone leaves the body unread: that works
        location /teapot/ {
            error_page 418 = @upload;
            return 418;
        }

        location @upload {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

my $port = $t->port('nginx');
my $self = "http://127.0.0.1:$port";

sub faults { CloudAuth::FakeGCS->faults($t, @_) }

# session starts at the fake GCS for the object NAME
sub sessions_for {
    my ($name) = @_;
    $name =~ s/([^A-Za-z0-9\-._~])/sprintf '%%%02X', ord $1/ge;
    return scalar grep { $_->{method} eq 'POST'
                         && $_->{uri} =~ /[?&]name=\Q$name\E(&|$)/ }
                  CloudAuth::FakeGCS->requests($t);
}

sub put {
    my ($path, $data, %h) = @_;
    my ($r) = CloudAuth::Upload::put($t, $path, $data,
                                     method => delete $h{-method} // 'PUT',
                                     headers => { Host => "127.0.0.1:$port",
                                                  %h });
    return $r;
}

my $BOUNDARY = '----WebKitFormBoundaryCsrf0123456789';
my $FORM = "--$BOUNDARY\r\n"
           . "Content-Disposition: form-data; name=\"f\"; filename=\"x.txt\""
           . "\r\nContent-Type: text/plain\r\n\r\nforged\r\n--$BOUNDARY--\r\n";
my $FORM_CT = "multipart/form-data; boundary=$BOUNDARY";

###############################################################################
# cross-site requests

# what a page on another site can send without a preflight: a form, a
# text/plain body; and a PUT, which a browser would preflight

for my $c (['form', 'POST', $FORM_CT, $FORM],
           ['text/plain', 'POST', 'text/plain', 'forged'],
           ['PUT', 'PUT', 'application/octet-stream', 'forged'])
{
    my ($what, $method, $ct, $body) = @$c;
    (my $name = "csrf-$what") =~ s{/}{-}g;

    for my $o (['https://evil.example', 'another site'],
               ['null', 'Origin: null'],
               ["http://127.0.0.1:" . ($port + 1), 'another port'],
               ["https://127.0.0.1:$port", 'https for an http request'])
    {
        my ($origin, $from) = @$o;
        my $r = put("/up/$name", $body, -method => $method,
                    'Content-Type' => $ct, Origin => $origin);
        is($r->{status}, 403, "$what from $from: 403");
        ok(!$r->{headers}{'access-control-allow-origin'},
           "$what from $from: no Allow-Origin");
    }

    my $r = put("/up/$name", $body, -method => $method,
                'Content-Type' => $ct, 'Sec-Fetch-Site' => 'cross-site');
    is($r->{status}, 403, "$what, Sec-Fetch-Site: cross-site, no Origin: 403");

    $r = put("/up/$name", $body, -method => $method, 'Content-Type' => $ct,
             Origin => $self, 'Sec-Fetch-Site' => 'cross-site');
    is($r->{status}, 403,
       "$what, Sec-Fetch-Site: cross-site, an Origin not listed: 403");

    is(scalar(grep { $_->{uri} =~ /[?&]name=csrf-/ }
                CloudAuth::FakeGCS->requests($t)),
       0, "$what: no session opened at GCS");
    ok(!grep({ $_->{name} =~ /^csrf-/ } CloudAuth::FakeGCS->objects($t)),
       "$what: nothing stored");
}

like($t->error_log, qr/upload: refused, Origin "https:\/\/evil\.example"/,
     'a refused Origin is logged');

# the request's own origin, listed origins, no Origin at all

my $r = put('/up/same.txt', 'same', -method => 'POST',
            'Content-Type' => 'text/plain', Origin => $self,
            'Sec-Fetch-Site' => 'same-origin');
is($r->{status}, 201, 'same origin: 201');
ok(CloudAuth::FakeGCS->object($t, $B, 'same.txt'), 'same origin: stored');
is(sessions_for('same.txt'), 1, 'same origin: one session');

$r = put('/up/same-form/', $FORM, -method => 'POST',
         'Content-Type' => $FORM_CT, Origin => uc $self);
is($r->{status}, 201, 'same origin, a form, the origin in capitals: 201');

$r = put('/up/listed.txt', 'listed', -method => 'POST',
         'Content-Type' => 'text/plain', Origin => 'https://app.example',
         'Sec-Fetch-Site' => 'cross-site');
is($r->{status}, 201, 'a listed origin, cross-site: 201');
is($r->{headers}{'access-control-allow-origin'}, 'https://app.example',
   'a listed origin: Allow-Origin');

$r = put('/up/none.txt', 'none');
is($r->{status}, 201, 'no Origin (curl, scripts): 201');

$r = put('/up/none-same.txt', 'none', 'Sec-Fetch-Site' => 'same-origin');
is($r->{status}, 201, 'no Origin, Sec-Fetch-Site: same-origin: 201');

$r = put('/up/default-port.txt', 'p', Origin => 'http://localhost',
         Host => 'localhost:80');
is($r->{status}, 201, 'the default port spelled out in Host only: 201');

$r = put('/any/star.txt', 'star', -method => 'POST',
         'Content-Type' => 'text/plain', Origin => 'https://evil.example');
is($r->{status}, 201, 'cors=*: any origin');

$r = put('/chunks/nocors.txt', 'x', Origin => $self);
is($r->{status}, 201, 'no cors=: same origin still works');
$r = put('/chunks/nocors.txt', 'x', Origin => 'https://app.example');
is($r->{status}, 403, 'no cors=: another origin 403');

# over TLS the request's own origin is https://

SKIP: {
    skip 'no curl', 5 unless -x '/usr/bin/curl';

    my $tls = $t->port('tls');
    my $file = $t->write_file('tls.txt', 'tls');
    # HTTP/1.1: from nginx 1.25.1 the server's "http2 on" (for the h2
    # port, %%HTTP2_ON%%) has TLS offer HTTP/2 too, which 1.22's does not
    my $curl = "curl -s -o /dev/null -w '%{http_code}' --cacert $dir/ca.crt"
               . " --http1.1 -T $file";

    my $url = "https://127.0.0.1:$tls/up";

    is(`$curl -H 'Origin: https://127.0.0.1:$tls' $url/tls.txt`, 201,
       'TLS, same origin: 201');
    is(`$curl -H 'Origin: http://127.0.0.1:$tls' $url/tls-http.txt`, 403,
       'TLS, the origin with http://: 403');
    is(sessions_for('tls-http.txt'), 0, 'TLS, http:// origin: no session');

    # HTTP/2: the Host is the :authority

    my $h2 = $t->port('h2');
    $curl = "curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge"
            . " -T $file";
    $url = "http://127.0.0.1:$h2/up";

    is(`$curl -H 'Origin: http://127.0.0.1:$h2' $url/h2.txt`, 201,
       'HTTP/2, same origin: 201');

    # without a body: curl often loses an HTTP/2 answer that comes before
    # the body it is sending (a "return 403;" location alike)
    $curl =~ s/-T \S+/-X PUT --data-binary ''/;
    is(`$curl -H 'Origin: https://evil.example' $url/h2-evil.txt`, 403,
       'HTTP/2, another origin: 403');
}

###############################################################################
# GCS's error words go to the log only

my $marker = 'gcs-said-' . CloudAuth::FakeGoogle::random_hex(8);
my $said = "$marker: sa\@project-x.iam.gserviceaccount.com does not have "
           . "storage.objects.create access\nforged: log line\x01";

faults(init_status => 403, error_message => $said);
$r = put('/up/refused', 'x');
is($r->{status}, 502, 'GCS 403 on the session start: 502');
is($r->{json}{error}{message}, 'GCS refused the upload (HTTP 403)',
   'the client gets our reason and the status');
unlike($r->{raw}, qr/\Q$marker\E|iam\.gserviceaccount/,
       'the client does not get GCS\'s words');

faults(fail_after => 300000, fail_status => 400, error_message => $said);
($r) = CloudAuth::Upload::upload($t, '/chunks/refused-chunk', size => 600000,
                                 chunked => 1);
is($r->{status}, 502, 'GCS 400 on a chunk: 502');
is($r->{json}{error}{message}, 'GCS refused a chunk (HTTP 400)',
   'a chunk: our reason and the status');
unlike($r->{raw}, qr/\Q$marker\E/, 'a chunk: not GCS\'s words');
faults();

my $log = $t->error_log;
my $want = 'upload of "refused" failed (502): GCS refused the upload '
           . "(HTTP 403); GCS said: $marker: sa\@project-x";
like($log, qr/\[error\].*\Q$want\E.*access\\x0aforged: log line\\x01/,
     'the error log has GCS\'s words, control characters escaped');
unlike($log, qr/^forged: log line/m, 'no line forged into the log');

###############################################################################
# Content-MD5 that is not 16 bytes in base64

for my $c (['AAAAAAAAAAAAAAAAAAAAAAAA', '24 characters without padding'],
           ['////////////////////////', '24 characters, all bits set'],
           ['AAAAAAAAAAAAAAAAAAAAAA=A', 'junk after the padding'],
           ['AAAAAAAAAAAAAAAAAAAA====', 'too much padding'],
           ['AAAAAAAAAAAAAAAAAAAAAAA=', 'one = only'])
{
    my ($md5, $what) = @$c;
    (my $name = "md5-$what") =~ s/\W/-/g;

    $r = put("/up/$name", 'body', 'Content-MD5' => $md5);
    is($r->{status}, 400, "Content-MD5, $what: 400");
    like($r->{json}{error}{message} // '', qr/Content-MD5 is not a base64 MD5/,
         "Content-MD5, $what: the reason");
    is(sessions_for($name), 0, "Content-MD5, $what: no session opened");
}

my $part = "--$BOUNDARY\r\n"
           . "Content-Disposition: form-data; name=\"f\"; filename=\"p.txt\""
           . "\r\nContent-MD5: AAAAAAAAAAAAAAAAAAAAAAAA\r\n\r\nbody\r\n"
           . "--$BOUNDARY--\r\n";
$r = put('/up/form-md5/', $part, -method => 'POST',
         'Content-Type' => $FORM_CT);
is($r->{status}, 400, 'a form part\'s unpadded Content-MD5: 400');
is(sessions_for('form-md5/p.txt'), 0, 'a form part\'s: no session opened');

###############################################################################
# the body discarded before the upload location

$r = $t->http_get('/small/discarded', -method => 'POST',
                  -body => 'd' x 2000);
is($r->{status}, 500, 'a body discarded whole, then error_page: 500');
like($r->{body}, qr/no longer there/, 'discarded: the reason');
is(sessions_for('small/discarded'), 0, 'discarded: no session opened');
ok(!CloudAuth::FakeGCS->object($t, $B, 'small/discarded'),
   'discarded: no empty object stored for it');

($r) = CloudAuth::Upload::upload($t, '/small/discarding', size => 300000,
                                 method => 'POST', piece => 1000);
is($r->{status}, 500, 'a body being discarded, then error_page: 500');
is(sessions_for('small/discarding'), 0, 'discarding: no session opened');

like($t->error_log, qr/\[error\].*request body was read or discarded/,
     'discarded: logged');

($r, my $sent) = CloudAuth::Upload::upload($t, '/teapot/kept', size => 5000,
                                           method => 'POST');
is($r->{status}, 201, 'error_page into the upload location, body kept: 201');
CloudAuth::Upload::stored_ok($t, $B, 'teapot/kept', $sent,
                             'error_page, body kept');
is(sessions_for('teapot/kept'), 1, 'error_page, body kept: one session');

###############################################################################
# session URIs off the endpoint's origin

my $gport = $t->port('gcs');
my $eport = $t->port('evil');

for my $c (["https://127.0.0.1:$gport\@127.0.0.1:$eport", 'user information'],
           ["https://127.0.0.1:$gport:\@127.0.0.1:$eport",
            'user information, empty password'],
           ["https://127.0.0.1:$eport", 'another port'],
           ["https://localhost:$gport", 'another host name'],
           ["http://127.0.0.1:$gport", 'http://'],
           ["https://127.0.0.1:$gport.evil.example", 'a host suffix'],
           ['', 'a relative URI'])
{
    my ($loc, $what) = @$c;
    (my $name = "loc-$what") =~ s/\W/-/g;

    faults(location => $loc);
    ($r) = CloudAuth::Upload::upload($t, "/chunks/$name", size => 300000);
    is($r->{status}, 502, "session URI with $what: 502");
    like($r->{json}{error}{message} // '', qr/no session URI at the endpoint/,
         "session URI with $what: the reason");
}

# the origin is the one libcurl connects to, however it is spelled

for my $c (["https://127.1:$gport", '127.1 for 127.0.0.1'],
           ["HTTPS://127.0.0.1:0$gport", 'HTTPS:// and a port with a 0'])
{
    my ($loc, $what) = @$c;
    (my $name = "loc-$what") =~ s/\W/-/g;

    faults(location => $loc);
    ($r, $sent) = CloudAuth::Upload::upload($t, "/chunks/$name",
                                            size => 300000);
    is($r->{status}, 201, "session URI with $what: 201");
    CloudAuth::Upload::stored_ok($t, $B, $name, $sent,
                                 "session URI with $what");
}

faults();

is($t->read_file('evil.log'), '', 'nothing went to another server');
$want = "session URI on https://127.0.0.1:$eport, not on the endpoint's "
        . "https://127.0.0.1:$gport";
like($t->error_log, qr/\Q$want\E/,
     'the origin of a session URI elsewhere is logged');
unlike($t->error_log, qr/upload_id=/, 'no session URI in the log');

$r = put('/up/after.txt', 'after');
is($r->{status}, 201, 'uploads work after all that');

$t->check_log_ok;

done_testing;
