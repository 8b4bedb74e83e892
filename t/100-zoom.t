#!/usr/bin/perl

# Zoom: type=zoom_s2s against a fake Zoom token endpoint that checks the
# Basic auth, the grant and the account ID, and type=zoom_jwt, signed
# locally, checked by a fake API with the API secret (header, claims, HS256
# signature, expiry).  Each gets injection, single flight, refresh ahead,
# 401 invalidation, failures with Zoom's own words, no secret in any log,
# and nginx -t messages for bad parameters.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;
use CloudAuth::FakeProviders;
use CloudAuth::KindTests;
use MIME::Base64 ();

my $t = CloudAuth::Test->new;
my $d = $t->dir;

my ($id, $secret, $account) = ('zC1ient_Id-42', 'zS3cret.' . ('s' x 24),
                               'AcCt-9_x');
my ($key, $api_secret) = ('zApiKey42', 'zApiS3cret+/=' . ('q' x 20));

$t->write_file('zoom.secret', "$secret\n", 0600);
$t->write_file('wrong.secret', "not-the-secret\n", 0600);
$t->write_file('api.secret', "$api_secret\n", 0600);
$t->write_file('api-wrong.secret', "wrong-api-secret", 0600);
$t->add_secrets($secret, $api_secret);

CloudAuth::FakeProviders::start($t, 'zoom',
    apps => { $id => { secret => $secret, account_id => $account } });
CloudAuth::FakeProviders::start($t, 'zoomapi',
    keys => { $key => $api_secret });

my $s2s = "type=zoom_s2s account_id=$account client_id=$id "
          . "client_secret_file=$d/zoom.secret "
          . 'token_url=https://127.0.0.1:%%PORT_ZOOM%%/oauth/token';
my $jwt = "type=zoom_jwt api_key=$key api_secret_file=$d/api.secret";

my %creds = (
    zoom => $s2s, zburst => $s2s, zshort => $s2s, z401 => $s2s,
    z503 => $s2s, zjson => $s2s, zleak => $s2s,
    zbad => $s2s =~ s/zoom\.secret/wrong.secret/r,
    jwt => $jwt, jburst => $jwt, jshort => "$jwt ttl=5", j401 => $jwt,
    jbad => $jwt =~ s/api\.secret/api-wrong.secret/r,
);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 3s;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /hdr/ {
            cloudauth zoom header=X-Api-Token "format=Token %s";
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF

for my $c (sort keys %creds) {
    my $up = $creds{$c} =~ /zoom_jwt/ ? 'https://127.0.0.1:%%PORT_ZOOMAPI%%'
                                      : 'http://127.0.0.1:%%UPSTREAM_PORT%%';
    $conf = "    cloudauth_credential $c $creds{$c};\n" . $conf . <<"EOF";
        location /$c/ {
            cloudauth $c;
            proxy_pass $up;
            proxy_ssl_trusted_certificate %%CA%%;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
        }
EOF
}

$t->run("$conf    }\n");

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

sub zcount { CloudAuth::FakeProviders::count($t, 'zoom') }
sub ztokens { CloudAuth::FakeProviders::tokens($t, 'zoom') }
sub zset { CloudAuth::FakeProviders::set($t, 'zoom', @_) }

# zoom_jwt: signings are logged at info, tokens seen by the fake API

sub jcount {
    my ($cred) = @_;
    return scalar(() = $t->error_log
                       =~ /credential "\Q$cred\E": token signed/g);
}

sub jtokens {
    my %seen;
    return grep { !$seen{$_}++ }
           map { $_->{verified} ? $_->{token} : () }
           CloudAuth::FakeProviders::requests($t, 'zoomapi');
}

###########################################################################
# zoom_s2s

my $r = $t->http_get('/zoom/x');
is($r->{status}, 200, 'zoom_s2s: proxied');
my ($token) = ztokens();
like($token, qr/^eyJzv\.zoom-fake-/, 'zoom_s2s: a Zoom token was issued');
is(auth($r), "Bearer $token", 'zoom_s2s: Authorization: Bearer token');
is(zcount(), 1, 'zoom_s2s: one token request');

my ($req) = CloudAuth::FakeProviders::requests($t, 'zoom');
ok($req->{verified}, 'zoom_s2s: request verified') or diag $req->{reason};
is($req->{method}, 'POST', 'zoom_s2s: POST');
is($req->{path}, '/oauth/token', 'zoom_s2s: /oauth/token');
is($req->{client_id}, $id, 'zoom_s2s: Basic auth with the client ID '
   . '(and the secret, the trailing newline of its file dropped)');
is_deeply($req->{form}, { grant_type => 'account_credentials',
                          account_id => $account },
          'zoom_s2s: grant_type=account_credentials and account_id only');
like($req->{content_type}, qr{^application/x-www-form-urlencoded},
     'zoom_s2s: form content type');

# Zoom's documented request, byte for byte (developers.zoom.us, "Server-to-
# Server OAuth": POST https://zoom.us/oauth/token, "Authorization: Basic
# base64(Client_ID:Client_Secret)", grant_type=account_credentials and
# account_id; its examples put them in the query, Zoom takes the form body
# as well, and the body keeps them out of access logs on the way)

sub hdrs {
    my ($rq, $name) = @_;
    return map { $_->[1] } grep { lc $_->[0] eq lc $name } @{ $rq->{headers} };
}

is("$req->{method} $req->{uri}", 'POST /oauth/token',
   'zoom_s2s shape: request line POST /oauth/token, no query string');
is_deeply([hdrs($req, 'Authorization')],
          ['Basic ' . MIME::Base64::encode_base64("$id:$secret", '')],
          'zoom_s2s shape: one "Authorization: Basic '
          . 'base64(client_id:client_secret)"');
is_deeply([hdrs($req, 'Content-Type')],
          ['application/x-www-form-urlencoded'],
          'zoom_s2s shape: one "Content-Type: '
          . 'application/x-www-form-urlencoded", no charset');
is($req->{body}, "grant_type=account_credentials&account_id=$account",
   'zoom_s2s shape: body exactly grant_type=account_credentials'
   . '&account_id=ACCOUNT');
is_deeply([hdrs($req, 'Content-Length')], [length $req->{body}],
          'zoom_s2s shape: Content-Length of that body, no chunking');
is_deeply([hdrs($req, 'Transfer-Encoding'), hdrs($req, 'Expect')], [],
          'zoom_s2s shape: no Transfer-Encoding, no Expect');
is_deeply([map { $_->[0] } grep { $_->[0] !~ /^(host|authorization|
                                       content-type|content-length|accept|
                                       user-agent)$/xi }
           @{ $req->{headers} }], [],
          'zoom_s2s shape: no other header than Host, Authorization, '
          . 'Content-Type, Content-Length, Accept, User-Agent')
    or diag explain $req->{headers};

$r = $t->http_get('/zoom/y', Authorization => 'Bearer client-token');
is(auth($r), "Bearer $token", 'zoom_s2s: cached, client header replaced');
is(zcount(), 1, 'zoom_s2s: no second token request');

$r = $t->http_get('/hdr/x');
like($r->{body}, qr/^header: X-Api-Token: Token \Q$token\E$/m,
     'header= and format=: X-Api-Token: Token <token>');

my %k = (count => \&zcount, tokens => \&ztokens, set => \&zset);

CloudAuth::KindTests::single_flight($t, %k, path => '/zburst/',
                                    name => 'zoom_s2s');
CloudAuth::KindTests::refresh_ahead($t, %k, path => '/zshort/',
                                    name => 'zoom_s2s');
CloudAuth::KindTests::invalidate($t, %k, path => '/z401/',
                                 name => 'zoom_s2s');

# failures, with Zoom's own words

CloudAuth::KindTests::fails($t, %k, path => '/zbad/', cred => 'zbad',
    name => 'zoom_s2s wrong secret',
    log => qr/HTTP 401: invalid_client: Invalid client_id or client_secret/);
CloudAuth::KindTests::fails($t, %k, path => '/z503/', cred => 'z503',
    name => 'zoom_s2s 503',
    behaviour => { status => 503, error => 'server_error',
                   reason => 'Zoom is under maintenance' },
    log => qr/HTTP 503: server_error: Zoom is under maintenance/);
CloudAuth::KindTests::fails($t, %k, path => '/zjson/', cred => 'zjson',
    name => 'zoom_s2s malformed', behaviour => { body => '{"access_tok' },
    log => qr/malformed/);

is(join("\n", grep { !/Invalid client_id/ }
              CloudAuth::FakeProviders::unverified($t, 'zoom')), '',
   'zoom_s2s: every other token request passed verification');

###########################################################################
# zoom_jwt

$r = $t->http_get('/jwt/x');
is($r->{status}, 200, 'zoom_jwt: the API accepted the token');
my ($jt) = jtokens();
is(auth($r), "Bearer " . ($jt // ''), 'zoom_jwt: Authorization: Bearer JWT');
is(jcount('jwt'), 1, 'zoom_jwt: signed once');

($req) = grep { $_->{verified} }
         CloudAuth::FakeProviders::requests($t, 'zoomapi');
is_deeply($req->{header}, { alg => 'HS256', typ => 'JWT' },
          'zoom_jwt: header {"alg":"HS256","typ":"JWT"}');
is($req->{claims}{iss}, $key, 'zoom_jwt: iss is the API key');
cmp_ok(abs($req->{claims}{exp} - time - 3600), '<=', 5,
       'zoom_jwt: exp is now + 3600 (ttl default)');
is(join(',', sort keys %{ $req->{claims} }), 'exp,iss',
   'zoom_jwt: claims iss and exp only');

$r = $t->http_get('/jwt/y');
is(auth($r), "Bearer $jt", 'zoom_jwt: cached');
is(jcount('jwt'), 1, 'zoom_jwt: not signed again');

$r = $t->http_get('/jbad/x');
is($r->{status}, 401, 'zoom_jwt with the wrong secret: the API says 401');
like($r->{body}, qr/Invalid access token/, 'zoom_jwt: Zoom\'s 401 body');
like(join(' ', CloudAuth::FakeProviders::unverified($t, 'zoomapi')),
     qr/signature does not verify/, 'zoom_jwt: the fake checked the HS256');

for my $c (qw(jburst jshort j401)) {
    my %j = (count => sub { jcount($c) }, tokens => \&jtokens,
             path => "/$c/", name => "zoom_jwt $c");

    CloudAuth::KindTests::single_flight($t, %j) if $c eq 'jburst';
    CloudAuth::KindTests::refresh_ahead($t, %j, life => 5) if $c eq 'jshort';
    CloudAuth::KindTests::invalidate($t, %j, gap => 1.1) if $c eq 'j401';
}

###########################################################################
# no secret in any log: a cold fetch, a signing, a hit, a failure, with
# the echo upstream keeping quiet ("noecho")

my $mark = length $t->error_log;
my @pages;

for my $p ('/zleak/x?noecho', '/zleak/y?noecho', '/zbad/x?noecho',
           '/jburst/x?noecho')
{
    $r = $t->http_get($p, Authorization => 'Basic dXNlcjpwYXNz');
    push @pages, $r->{raw};
}

is($pages[0] =~ m{^HTTP/1\.\d 200}, 1, 'noecho requests served');

CloudAuth::KindTests::no_leaks($t, $mark, @pages);
unlike($t->error_log, qr/\Q$secret\E|\Q$api_secret\E/,
       'no client or API secret anywhere in the error log');
$t->check_log_ok;

###########################################################################
# bad configurations fail nginx -t, naming the credential and the fix

sub nginx_t {
    my ($cred) = @_;
    return $t->nginx_t(<<"EOF");
    cloudauth_credential zc $cred;
EOF
}

sub bad {
    my ($name, $cred, @re) = @_;
    my ($rc, $out) = nginx_t($cred);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, qr/\[emerg\].*cloudauth_credential "zc"/,
         "$name: names the directive and the credential");
    like($out, $_, "$name: says $_") for @re;
    unlike($out, qr/\[(alert|crit)\]|Sanitizer/, "$name: no alert");
}

my $ok = "account_id=$account client_id=$id";

bad('zoom_s2s: no account_id', "type=zoom_s2s client_id=$id "
    . "client_secret_file=$d/zoom.secret", qr/account_id=/);
bad('zoom_s2s: no client_id', "type=zoom_s2s account_id=$account "
    . "client_secret_file=$d/zoom.secret", qr/client_id=/);
bad('zoom_s2s: no secret', "type=zoom_s2s $ok",
    qr/"client_secret_file=" is required/);
bad('zoom_s2s: missing secret file',
    "type=zoom_s2s $ok client_secret_file=$d/nosuch.secret",
    qr/client_secret_file "\Q$d\E\/nosuch\.secret": no such file/);
$t->write_file('empty.secret', "\n", 0600);
bad('zoom_s2s: empty secret file',
    "type=zoom_s2s $ok client_secret_file=$d/empty.secret", qr/empty/);
bad('zoom_s2s: both secrets',
    "type=zoom_s2s $ok client_secret_file=$d/zoom.secret client_secret=x",
    qr/both given/);
bad('zoom_s2s: client_id with ":"', "type=zoom_s2s account_id=$account "
    . "client_id=a:b client_secret_file=$d/zoom.secret", qr/client_id/);
bad('zoom_s2s: plain http', "type=zoom_s2s $ok "
    . "client_secret_file=$d/zoom.secret token_url=http://zoom.us/oauth/token",
    qr/token_url.*plain http/);
bad('zoom_s2s: unknown parameter', "type=zoom_s2s $ok "
    . "client_secret_file=$d/zoom.secret scope=x",
    qr/unknown parameter "scope"/);
bad('zoom_jwt: no api_key', "type=zoom_jwt api_secret_file=$d/api.secret",
    qr/api_key=/);
bad('zoom_jwt: no secret', "type=zoom_jwt api_key=$key",
    qr/"api_secret_file=" is required/);
bad('zoom_jwt: bad ttl',
    "type=zoom_jwt api_key=$key api_secret_file=$d/api.secret ttl=often",
    qr/ttl="often"/);
bad('zoom_jwt: ttl too short',
    "type=zoom_jwt api_key=$key api_secret_file=$d/api.secret ttl=1",
    qr/ttl=/);

my ($rc, $out) = nginx_t("type=zoom_s2s $ok client_secret=$secret");
is($rc, 0, 'inline client_secret: allowed') or diag $out;
like($out, qr/\[warn\].*inline "client_secret=".*client_secret_file=/,
     'inline client_secret: a warning pointing at client_secret_file=');
unlike($out, qr/\Q$secret\E/, 'inline client_secret: not in the warning');

($rc, $out) = nginx_t("type=zoom_jwt api_key=$key api_secret=$api_secret "
                      . 'ttl=1h');
is($rc, 0, 'inline api_secret, ttl=1h: allowed') or diag $out;
like($out, qr/\[warn\].*inline "api_secret="/, 'inline api_secret: warning');

$t->write_file('open.secret', $secret, 0644);
($rc, $out) = nginx_t("type=zoom_s2s $ok client_secret_file=$d/open.secret");
is($rc, 0, 'secret file of mode 0644: allowed') or diag $out;
like($out, qr/\[warn\].*open\.secret.*chmod 600/,
     'secret file of mode 0644: a warning');

done_testing;
