#!/usr/bin/perl

# cloudauth_gcs_upload and what it must not trust: a Content-MD5 that would
# not decode to 16 bytes.

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

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        client_max_body_size 20m;

        location /up/ {
            cloudauth_gcs_upload google bucket=test-bucket
                endpoint=https://127.0.0.1:%%PORT_GCS%%;
        }
    }
EOF

my $port = $t->port('nginx');

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
my $FORM_CT = "multipart/form-data; boundary=$BOUNDARY";

my $r;

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

$r = put('/up/after.txt', 'after');
is($r->{status}, 201, 'uploads work after all that');

$t->check_log_ok;

done_testing;
