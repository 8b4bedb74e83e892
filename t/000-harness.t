#!/usr/bin/perl

# The harness and its fakes alone, without the module: certificates and key,
# the token endpoint's verification of signed assertions over verified TLS,
# its fault switches, the echo upstream, the HTTP client helpers, and nginx
# started, reloaded and tested with -t through the harness.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Crypt::JWT qw(encode_jwt);
use HTTP::Date qw(str2time);
use IO::Socket::SSL;
use JSON::PP qw(decode_json);
use Time::HiRes qw(time);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;
my $d = $t->dir;
my $key = $t->key;
my $url = $t->token_url;
my $scope = join ' ', @CloudAuth::Test::SCOPES;

# PKI and key file

like(`openssl verify -CAfile $d/ca.crt $d/server.crt 2>&1`, qr/: OK$/m,
     'server certificate signed by the CA');
like(`openssl x509 -in $d/server.crt -noout -ext subjectAltName 2>&1`,
     qr/IP Address:127\.0\.0\.1.*DNS:localhost/s, 'SAN 127.0.0.1, localhost');

my $json = decode_json($t->read_file('sa.json'));
is($json->{type}, 'service_account', 'key type');
is($json->{token_uri}, $url, 'key token_uri');
like($json->{private_key}, qr/^-----BEGIN (PRIVATE) KEY-----\n/,
     'key PEM');
ok($json->{$_}, "key $_")
    for qw(client_email private_key_id client_id project_id);
is((stat "$d/sa.json")[2] & 0777, 0600, 'key file mode 0600');

# the token endpoint

sub assertion {
    my (%o) = @_;
    my $k = delete $o{key} // $key;
    my $alg = delete $o{alg} // 'RS256';
    my $h = delete $o{headers}
            // { typ => 'JWT', kid => $k->{private_key_id} };
    my $now = time;
    my %c = (iss => $k->{client_email}, scope => $scope, aud => $url,
             iat => int $now, exp => int($now) + 3600, %o);
    delete @c{ grep { !defined $c{$_} } keys %c };
    return encode_jwt(alg => $alg, key => \$k->{private_key},
                      extra_headers => $h, payload => \%c);
}

sub form {
    my ($jwt) = @_;
    return 'grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer'
           . "&assertion=$jwt";
}

sub tls {
    return IO::Socket::SSL->new(PeerAddr => '127.0.0.1',
        PeerPort => $t->port('token'), SSL_ca_file => "$d/ca.crt",
        SSL_verifycn_scheme => 'http', SSL_verifycn_name => '127.0.0.1', @_);
}

sub send_post {
    my ($s, $body, %h) = @_;
    my $ct = delete $h{ct} // 'application/x-www-form-urlencoded';
    my $extra = join '', map { "$_: $h{$_}\r\n" } sort keys %h;
    print $s "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        . "Content-Type: $ct\r\n$extra"
        . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}

# one HTTP/1.1 response, by Content-Length
sub read_response {
    my ($s) = @_;
    local $/ = "\r\n";
    my $head = '';
    while (defined(my $l = <$s>)) {
        $head .= $l;
        last if $l eq "\r\n" && $head !~ m{^HTTP/1.1 100 }m;
        $head = '' if $l eq "\r\n";
    }
    my $r = CloudAuth::Test::parse_response($head);
    read $s, $r->{body}, $r->{headers}{'content-length'} // 0;
    return $r;
}

sub post {
    my ($body, %h) = @_;
    my $s = tls() or return { status => 0, error => $SSL_ERROR };
    send_post($s, $body, %h);
    return read_response($s);
}

my $r = post(form(assertion()));
is($r->{status}, 200, 'signed assertion: 200');
my $answer = eval { decode_json($r->{body}) } || {};
like($answer->{access_token}, qr/^ya29\.fake-1-[0-9a-f]{32}$/, 'access_token');
is($answer->{expires_in}, 3600, 'expires_in 3600');
is($answer->{token_type}, 'Bearer', 'token_type');
like($r->{headers}{date}, qr/GMT$/, 'Date header');

my ($rec) = $t->token_requests;
ok($rec->{verified}, 'recorded as verified');
is($rec->{claims}{iss}, $key->{client_email}, 'recorded claims');
is($rec->{token}, $answer->{access_token}, 'recorded token');
is_deeply([$t->issued_tokens], [$answer->{access_token}], 'issued_tokens');

ok(!tls(SSL_ca_file => '/etc/ssl/certs/ca-certificates.crt'),
   'TLS does not verify without the test CA');

# keep-alive, and a client that waits for 100-continue

my $s = tls();
send_post($s, form(assertion()));
my $r1 = read_response($s);
send_post($s, form(assertion()), Expect => '100-continue');
my $r2 = read_response($s);
is("$r1->{status} $r2->{status}", '200 200', 'two requests on one connection');
my @rq = $t->token_requests;
is($rq[-1]{conn_request}, 2, 'second request on the connection');
is($rq[-1]{peer}, $rq[-2]{peer}, 'same peer');
close $s;

# what the endpoint refuses

my %bad = (
    'wrong signature' => [ form(assertion() =~ s/.{6}$/AAAAAA/r),
                           qr/Signature/ ],
    'wrong aud' => [ form(assertion(aud => 'https://evil.example/token')),
                     qr/aud/ ],
    'wrong iss' => [ form(assertion(iss => 'x@example.com')), qr/iss/ ],
    'scope with commas' => [ form(assertion(scope => join ',',
                                  @CloudAuth::Test::SCOPES)), qr/scope/ ],
    'exp not iat + 3600' => [ form(assertion(exp => time + 7200)), qr/exp/ ],
    'iat in the past' => [ form(assertion(iat => time - 600,
                                          exp => time + 3000)), qr/iat/ ],
    'unknown kid' => [ form(assertion(headers => { typ => 'JWT',
                                                   kid => 'nope' })),
                       qr/kid/ ],
    'no typ' => [ form(assertion(headers => {
                      kid => $key->{private_key_id} })), qr/typ/ ],
    'HS256' => [ form(encode_jwt(alg => 'HS256', key => 'secret',
                                 payload => { iss => 'x' },
                                 extra_headers => { typ => 'JWT' })),
                 qr/alg/ ],
    'wrong grant_type' => [ 'grant_type=password&assertion=' . assertion(),
                            qr/grant_type/ ],
    'no assertion' => [ 'grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type'
                        . '%3Ajwt-bearer', qr/assertion/ ],
    'JSON body' => [ form(assertion()), qr/Content-Type/,
                     ct => 'application/json' ],
);

for my $name (sort keys %bad) {
    my ($body, $re, %h) = @{ $bad{$name} };
    my $n = $t->token_count;
    my $r = post($body, %h);
    my $e = eval { decode_json($r->{body}) } || {};
    is("$r->{status} " . ($e->{error} // ''), '400 invalid_grant',
       "$name: invalid_grant");
    like($e->{error_description} // '', $re, "$name: described");
    my @rq = $t->token_requests;
    ok(@rq == $n + 1 && !$rq[-1]{verified} && $rq[-1]{reason} =~ $re,
       "$name: reason recorded");
}

is(scalar $t->token_unverified, scalar keys %bad, 'token_unverified');

$r = post(form(assertion(sub => 'user@example.com')));
is($r->{status}, 200, 'sub accepted');
is(($t->token_requests)[-1]{sub}, 'user@example.com', 'sub recorded');

# a second key made later is known to the endpoint

my $k2 = $t->make_key(file => 'other.json');
is(post(form(assertion(key => $k2)))->{status}, 200, 'second key accepted');

# fault switches

$t->token_set(expires_in => 7);
is(decode_json(post(form(assertion()))->{body})->{expires_in}, 7,
   'expires_in set');

$t->token_set(status => 503);
$r = post(form(assertion()));
is($r->{status}, 503, 'status 503');
like($r->{body}, qr/"error"/, '503 JSON error body');

$t->token_set(status => 400, error => 'invalid_grant',
              error_description => 'Token must be a short-lived token');
$r = post(form(assertion()));
is($r->{status}, 400, 'injected invalid_grant status');
like($r->{body}, qr/short-lived/, 'injected error_description');

$t->token_set(status => 429, retry_after => 7, date_offset => 3600);
$r = post(form(assertion()));
is($r->{headers}{'retry-after'}, 7, 'Retry-After');
cmp_ok(abs(str2time($r->{headers}{date}) - time - 3600), '<', 5,
       'Date shifted by date_offset');

$t->token_set(body => '{"access_token": ');
$r = post(form(assertion()));
is("$r->{status} $r->{body}", '200 {"access_token": ', 'raw body');

$t->token_set(delay => 0.5);
my $t0 = time;
$r = post(form(assertion()));
cmp_ok(time - $t0, '>=', 0.5, 'delay');
is($r->{status}, 200, 'delayed answer');

$t->token_set(drop => 1);
$r = post(form(assertion()));
is($r->{status}, 0, 'drop: no answer');

$t->token_set;
my @issued = $t->issued_tokens;
my %uniq = map { $_ => 1 } @issued;
is(scalar keys %uniq, scalar @issued, 'issued tokens unique');
is(scalar @issued, 7, 'issued tokens counted');
is($t->token_count, 12 + keys %bad, 'token requests counted');

# echo upstream

$r = $t->http_get('/x?y=1', Authorization => 'Bearer abc',
                  -port => $t->port('upstream'));
is($r->{status}, 200, 'echo 200');
is($r->{headers}{'x-echo-authorization'}, 'Bearer abc', 'echo authorization');
is($r->{headers}{'x-echo-authorization-count'}, 1, 'echo count');
like($r->{body}, qr/^path: \/x\?y=1\nauthorization: Bearer abc\n/,
     'echo body');
like($r->{body}, qr/^header: Authorization: Bearer abc$/m, 'echo headers');

$r = $t->http_get('/x?noecho', Authorization => 'Bearer abc',
                  -port => $t->port('upstream'));
is($r->{headers}{'x-echo-authorization'}, 'hidden', 'noecho');
unlike($r->{raw}, qr/abc/, 'noecho: value not sent back');
is(($t->upstream_requests)[-1]{authorization}[0], 'Bearer abc',
   'noecho: value recorded');

$r = $t->http_get('/x', -port => $t->port('upstream'));
is($r->{headers}{'x-echo-authorization'}, 'none', 'echo none');

$r = $t->http_get('/x', Authorization => ['Bearer a', 'Bearer b'],
                  -port => $t->port('upstream'));
is($r->{headers}{'x-echo-authorization-count'}, 2, 'echo two headers');

is($t->http_get('/a/401/b', -port => $t->port('upstream'))->{status}, 401,
   'echo /401');

$t->revoke('tok1');
is($t->http_get('/x', Authorization => 'Bearer tok1',
                -port => $t->port('upstream'))->{status}, 401, 'revoked');
is($t->http_get('/x', Authorization => 'Bearer tok2',
                -port => $t->port('upstream'))->{status}, 200, 'not revoked');

$s = IO::Socket::INET->new('127.0.0.1:' . $t->port('upstream'));
print $s "GET /k1 HTTP/1.1\r\nHost: x\r\n\r\n";
$r1 = read_response($s);
print $s "GET /k2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
$r2 = read_response($s);
is("$r1->{headers}{'x-echo-path'} $r2->{headers}{'x-echo-path'}", '/k1 /k2',
   'upstream keep-alive');

my @ur = $t->upstream_requests;
is($ur[-1]{uri}, '/k2', 'upstream requests recorded');

# client helpers: burst, latency, refused

$t0 = time;
my @b = $t->burst('/b?delay=0.5', 50, -port => $t->port('upstream'));
is(scalar(grep { $_->{status} == 200 } @b), 50, 'burst: 50 answers');
cmp_ok(time - $t0, '<', 5, 'burst: served concurrently');
ok(!grep({ $_->{latency} < 0.5 } @b), 'burst: latencies');

$r = $t->http_get('/', -port => $t->release_port('closed'));
is($r->{status}, 0, 'refused: status 0');

# reserved ports: reserved (a listener is there), and once released free at
# once for whoever binds them, whatever this process forked meanwhile: a
# child that lingers (a fake server before it sets up, a client) never has
# a reserved port's socket (issue 19: nginx's bind() failed while a fake
# server's child still held its port)

{
    my $p = $t->port('reserved');
    ok(IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p),
       'a reserved port has a listener');

    my $kid = fork // die "fork: $!";
    if (!$kid) {
        sleep 5;
        POSIX::_exit(0);
    }

    $t->release_port('reserved');
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p,
                                  Listen => 5, ReuseAddr => 1,
                                  Proto => 'tcp');
    ok($s, 'released while a forked child lives: bound and listening')
        or diag("bind 127.0.0.1:$p: $!");
    close $s if $s;
    kill 'KILL', $kid;
    waitpid $kid, 0;

    # a fake server binds a port it was given on its own
    my $pid = $t->start_fake(late => handler => sub {
        return { status => 200, body => "late\n" };
    });
    is($t->http_get('/', -port => $t->port('late'))->{body}, "late\n",
       'a fake started on a port of its own answers');
}

# nginx through the harness, without the module

my $plain = <<'EOF';
worker_processes 2;
master_process on;
daemon off;
error_log %%TESTDIR%%/error.log info;
pid %%TESTDIR%%/nginx.pid;
events { }
http {
    access_log %%TESTDIR%%/access.log;
    client_body_temp_path %%TESTDIR%%/body;
    proxy_temp_path %%TESTDIR%%/proxy;
    fastcgi_temp_path %%TESTDIR%%/fastcgi;
    uwsgi_temp_path %%TESTDIR%%/uwsgi;
    scgi_temp_path %%TESTDIR%%/scgi;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { return 200 "gen %%GEN%%\n"; }
        location /up/ { proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%; }
    }
}
EOF

like($t->conf('# body'), qr/^load_module \Q$t->{module}\E;/, 'conf wrapper');
ok(!eval { $t->expand('%%NOPE%%') }, 'unknown placeholder dies');

my ($rc, $out) = $t->nginx_t($plain =~ s/%%GEN%%/1/r, raw => 1);
is($rc, 0, 'nginx -t ok') or diag $out;
($rc, $out) = $t->nginx_t($plain =~ s/%%GEN%%/1/r =~ s/return 200/retur 200/r,
                          raw => 1);
isnt($rc, 0, 'nginx -t fails');
like($out, qr/\[emerg\].*retur/, 'nginx -t output');

$t->run($plain =~ s/%%GEN%%/1/r, raw => 1);
is(scalar(my @w = $t->worker_pids), 2, 'two workers');
is($t->http_get('/')->{body}, "gen 1\n", 'nginx serves');
is($t->http_get('/up/x', Authorization => 'Bearer c')->{headers}
   {'x-echo-authorization'}, 'Bearer c', 'nginx proxies to the upstream');

ok($t->reload($plain =~ s/%%GEN%%/2/r, raw => 1), 'reload');
my %old = map { $_ => 1 } @w;
ok(!grep({ $old{$_} } $t->worker_pids), 'new workers');
is($t->http_get('/')->{body}, "gen 2\n", 'reloaded configuration');

@b = $t->burst('/', 200);
is(scalar(grep { $_->{status} == 200 } @b), 200, 'burst of 200 on nginx');

# logs and secrets

$t->check_log_ok;
ok(!$t->{pid}, 'stopped');

$t->write_file('planted.log', "2024/01/01 [alert] 1#1: planted\n");
is(scalar(my @bad = $t->check_log('planted.log')), 1,
   'check_log finds alerts');

my @secrets = $t->secrets;
ok((grep { $_ eq $issued[0] } @secrets), 'secrets: tokens');
ok((grep { index($key->{private_key}, $_) > 0 } @secrets), 'secrets: key');
ok((grep { /^ey.*\..*\./ } @secrets), 'secrets: assertions');
is(scalar $t->leaks, 0, 'no leaks in logs');
is(scalar $t->leaks("x $issued[1] y"), 1, 'leaks finds a token');

done_testing;
