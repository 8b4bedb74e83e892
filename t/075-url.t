#!/usr/bin/perl

# URLs a credential's requests go to are checked with libcurl's own URL
# parser at "nginx -t": http:// or https:// only, never a user name or
# password (http://localhost:1@evil.example/ goes to evil.example, not to
# loopback), plain http only to loopback (127.0.0.0/8, [::1], localhost)
# or, for google_metadata, to the metadata server.  Each refusal names the
# credential, the parameter and the fix, and never shows a password.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;

my $t = CloudAuth::Test->new(fakes => 0);
my $d = $t->dir;

$t->write_file('client.secret', "s3cr3t-client\n", 0600);

# nginx -t on credential lines (and a location's lines)
sub nginx_t {
    my ($creds, $loc) = @_;
    $loc //= 'cloudauth c;';
    return $t->nginx_t(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;

$creds

    server {
        listen 127.0.0.1:%%PORT%%;

        location /x/ {
            $loc
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF
}

sub sa { "cloudauth_credential c type=google_service_account "
         . "key_file=%%KEY_FILE%% scopes=%%SCOPES%% token_url=$_[0];" }

sub good {
    my ($name, $creds, $loc) = @_;
    my ($rc, $out) = nginx_t($creds, $loc);
    is($rc, 0, "$name: nginx -t passes") or diag $out;
}

# bad(NAME, CREDS, LOC, PARAM, FIX, SECRET): nginx -t fails, with a message
# naming credential "c", PARAM and FIX, and without SECRET
sub bad {
    my ($name, $creds, $loc, $param, $fix, $secret) = @_;
    my ($rc, $out) = nginx_t($creds, $loc);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "c": \Q$param\E /,
         "$name: names the credential and $param");
    like($out, $fix, "$name: says what to do");
    unlike($out, qr/test is successful|\[(alert|crit)\]|Sanitizer/,
           "$name: no success, no alert");
    unlike($out, qr/\Q$secret\E/, "$name: the password is not shown")
        if defined $secret;
}

my $userinfo = qr/user name or password in it.*remove it/;
my $plain = qr/plain http:\/\/ to a host that is not loopback: use https:\/\//;

# token_url of google_service_account

bad('userinfo before an evil host', sa('http://localhost:1@evil.example/token'),
    undef, 'token_url', $userinfo, 'localhost:1');
bad('loopback-looking host name', sa('http://127.0.0.1.evil.example/'),
    undef, 'token_url', $plain);
bad('[::1] as userinfo', sa('http://[::1]@evil/'), undef, 'token_url',
    $userinfo);
bad('ftp', sa('ftp://127.0.0.1/token'), undef, 'token_url',
    qr/not an http:\/\/ or https:\/\/ URL: use https:\/\//);
bad('https with user and password', sa('https://user:pw@host/'), undef,
    'token_url', $userinfo, 'user:pw');
bad('user only, https', sa('https://someone@oauth2.googleapis.com/token'),
    undef, 'token_url', $userinfo, 'someone');
bad('fragment trick', sa('http://evil.example#@127.0.0.1/token'), undef,
    'token_url', $plain);
bad('no scheme', sa('127.0.0.1/token'), undef, 'token_url',
    qr/not an https:\/\/ URL libcurl accepts.*https:\/\/host/);
bad('not loopback', sa('http://10.0.0.1/token'), undef, 'token_url', $plain);

good('https', sa('https://oauth2.googleapis.com/token'));
good('http to 127.0.0.1 with a port',
     sa('http://127.0.0.1:%%TOKEN_PORT%%/token'));
good('http to [::1] with a port', sa('http://[::1]:1/'));
good('http to localhost', sa('http://localhost:8080/token'));
good('http to 127.0.0.0/8', sa('http://127.1.2.3/token'));
good('https with a query', sa('https://login.example.com/token?p=B2C_1_x'));

# the other kinds' URL parameters

my $oauth = "cloudauth_credential c type=oauth2_client_credentials "
            . "client_id=id client_secret_file=$d/client.secret token_url=";

bad('oauth2 client credentials', $oauth
    . 'https://id:s3cr3t-inline@login.example.com/token;', undef,
    'token_url', $userinfo, 's3cr3t-inline');
good('oauth2 client credentials', $oauth . 'https://login.example.com/t;');

my $zoom = "cloudauth_credential c type=zoom_s2s account_id=a client_id=id "
           . "client_secret_file=$d/client.secret token_url=";

bad('zoom_s2s', $zoom . 'http://localhost@zoom.evil.example/oauth/token;',
    undef, 'token_url', $userinfo);

my $md = 'cloudauth_credential c type=google_metadata endpoint=';

good('metadata server by name', $md . 'http://metadata.google.internal;');
good('metadata server by address', $md . 'http://169.254.169.254;');
good('metadata on loopback', $md . 'http://127.0.0.1:%%PORT_MD%%;');
bad('metadata name as userinfo',
    $md . 'http://metadata.google.internal@evil.example;', undef,
    'endpoint', $userinfo);
bad('metadata-looking host name',
    $md . 'http://169.254.169.254.evil.example;', undef, 'endpoint',
    qr/neither loopback nor the metadata server: use https:\/\//);

my $src = sa('https://oauth2.googleapis.com/token') =~ s/ c / src /r;
my $im = "$src\n    cloudauth_credential c type=google_impersonate source=src "
         . "target=t\@p.iam.gserviceaccount.com scopes=%%SCOPES%% endpoint=";

bad('impersonate endpoint', $im . 'http://127.0.0.1@evil.example;', undef,
    'endpoint', $userinfo);
good('impersonate endpoint', $im . 'https://iamcredentials.googleapis.com;');

# cloudauth_gcs_upload endpoint=

my $g = sa('https://oauth2.googleapis.com/token');

bad('upload endpoint', $g, 'cloudauth_gcs_upload c bucket=test-bucket '
    . 'endpoint=http://localhost:1@storage.evil.example;', 'endpoint=',
    $userinfo);
good('upload endpoint', $g, 'cloudauth_gcs_upload c bucket=test-bucket '
     . 'endpoint=http://127.0.0.1:%%PORT_GCS%%;');

done_testing;
