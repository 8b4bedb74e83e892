#!/usr/bin/perl

# Teams: "cloudauth $variable" chooses the credential per request, and the
# README's recipes, each as written there: by client certificate (a test
# CA issuing two team certificates), by auth_request, by auth_basic, a rate
# limit per team keyed by $cloudauth_credential, and a JSON access log with
# who called what as whom, never the token.  The fake OAuth2 token endpoint
# records which client ID (team) each token was issued to, and the echo
# upstream shows which token arrived.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Socket::SSL;
use JSON::PP;
use MIME::Base64 ();
use CloudAuth::Test;
use CloudAuth::FakeProviders;

my $t = CloudAuth::Test->new;
my $d = $t->dir;

###########################################################################
# the teams' credentials at the fake token endpoint

my %secret = map { ($_ => "s3cret-of-$_-" . ('z' x 16)) } qw(a b);

$t->write_file("team-$_.secret", "$secret{$_}\n", 0600) for keys %secret;
$t->add_secrets(values %secret);

CloudAuth::FakeProviders::start($t, 'oauth2', clients => {
    map { ("app-$_" => { secret => $secret{$_}, auth => 'basic' }) }
    keys %secret });

my $url = 'token_url=https://127.0.0.1:%%PORT_OAUTH2%%/oauth2/token';

# the team a token was issued to
sub team_of {
    my ($token) = @_;
    my ($rec) = grep { ($_->{token} // '') eq $token }
                CloudAuth::FakeProviders::requests($t, 'oauth2');
    return $rec ? $rec->{client_id} =~ s/^app-/team-/r : 'none';
}

sub tokens { CloudAuth::FakeProviders::tokens($t, 'oauth2') }
sub count { CloudAuth::FakeProviders::count($t, 'oauth2') }

###########################################################################
# client certificates: the harness's CA issues one per team, and one to
# someone in no team

$t->write_file('client.cnf', <<'EOF');
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
EOF

my %dn = (alice => '/O=Example/OU=team-a/CN=alice',
          bob => '/O=Example/OU=team-b/CN=bob',
          eve => '/O=Example/OU=team-z/CN=eve');

for my $who (sort keys %dn) {
    $t->openssl("req -new -newkey rsa:2048 -nodes -subj \"$dn{$who}\" "
                . "-keyout $who.key -out $who.csr");
    $t->openssl("x509 -req -in $who.csr -CA ca.crt -CAkey ca.key "
                . "-CAcreateserial -days 3 -extfile client.cnf "
                . "-extensions client -out $who.crt");
}

# users for auth_basic
$t->openssl("passwd -apr1 -salt s4lt4pr1 pw-alice > pw.alice");
$t->openssl("passwd -apr1 -salt s4lt4pr1 pw-bob > pw.bob");
$t->write_file('htpasswd', join '', map { "$_:" . $t->read_file("pw.$_") }
                                    qw(alice bob));
chmod 0644, "$d/htpasswd";

###########################################################################

$t->run(<<"EOF");
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential team-a type=oauth2_client_credentials $url
        client_id=app-a client_secret_file=$d/team-a.secret;
    cloudauth_credential team-b type=oauth2_client_credentials $url
        client_id=app-b client_secret_file=$d/team-b.secret;
    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+\@example\\.com";

    # the JSON access log recipe

    log_format cloudauth_audit escape=json
        '{"time":"\$time_iso8601","client":"\$remote_addr",'
        '"cert":"\$ssl_client_s_dn","user":"\$remote_user",'
        '"request":"\$request_method \$uri","status":"\$status",'
        '"credential":"\$cloudauth_credential",'
        '"subject":"\$cloudauth_subject",'
        '"cache":"\$cloudauth_cache_status",'
        '"token_age":"\$cloudauth_token_age",'
        '"token_ttl":"\$cloudauth_token_ttl",'
        '"error":"\$cloudauth_error"}';

    access_log %%TESTDIR%%/audit.log cloudauth_audit;

    # by client certificate: the whole subject DN, as the CA issued it

    map \$ssl_client_s_dn \$team_by_cert {
        default                         "";
        "CN=alice,OU=team-a,O=Example"  team-a;
        "CN=bob,OU=team-b,O=Example"    team-b;
    }

    # by auth_basic: the user the password was checked for

    map \$remote_user \$team_by_user {
        default  "";
        alice    team-a;
        bob      team-b;
    }

    # a rate limit per team

    limit_req_zone \$cloudauth_credential zone=teams:1m rate=1r/m;
    limit_req_status 429;

    # a name resolved once per request, whatever a redirect changes

    map \$uri \$team_by_uri {
        volatile;
        ~^/first/   team-a;
        ~^/second/  team-b;
    }

    server {
        listen 127.0.0.1:%%PORT_TLS%% ssl;

        ssl_certificate %%TESTDIR%%/server.crt;
        ssl_certificate_key %%TESTDIR%%/server.key;
        ssl_client_certificate %%CA%%;
        ssl_verify_client on;

        location /api/ {
            cloudauth \$team_by_cert;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /limited/ {
            limit_req zone=teams burst=2 nodelay;
            cloudauth \$team_by_cert;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }

    server {
        listen 127.0.0.1:%%PORT%%;

        # by auth_request: the auth service answers with X-Team

        location /ar/ {
            auth_request /_who;
            auth_request_set \$team_by_auth \$upstream_http_x_team;
            cloudauth \$team_by_auth;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location = /_who {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_AUTH%%;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }

        location /basic/ {
            auth_basic "teams";
            auth_basic_user_file %%TESTDIR%%/htpasswd;
            cloudauth \$team_by_user;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        # not a recipe: the name straight from a header, to try any value

        location /hdr/ {
            cloudauth \$http_x_team;
            cloudauth_subject \$http_x_user;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /first/ {
            cloudauth \$team_by_uri;
            proxy_pass http://127.0.0.1:%%PORT_DEAD%%;
            error_page 502 = /second/x;
        }

        location /second/ {
            cloudauth \$team_by_uri;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }

    # the auth service of the auth_request recipe

    map \$http_x_api_key \$auth_team {
        default    "";
        key-alice  team-a;
        key-bob    team-b;
        key-ghost  team-ghost;
    }

    server {
        listen 127.0.0.1:%%PORT_AUTH%%;
        access_log off;

        location / {
            if (\$auth_team = "") {
                return 401;
            }

            add_header X-Team \$auth_team;
            return 204;
        }
    }
EOF

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

# the error log from byte MARK on, without the debug lines
sub errlog {
    my ($mark) = @_;
    return join "\n", grep { !/\[debug\]/ }
                      split /\n/, substr($t->error_log, $mark // 0);
}

sub token_of {
    my ($r) = @_;
    my ($token) = auth($r) =~ /^Bearer (\S+)$/;
    return $token // 'none';
}

# one HTTPS request, with WHO's certificate (or none)
sub https_get {
    my ($path, $who) = @_;

    my $s = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $t->port('tls'),
        SSL_ca_file => "$d/ca.crt", SSL_verifycn_name => 'localhost',
        SSL_verifycn_scheme => 'http',
        $who ? (SSL_cert_file => "$d/$who.crt",
                SSL_key_file => "$d/$who.key") : (),
        Timeout => 10 * CloudAuth::Test::tf())
        or return { status => 0, error => "$SSL_ERROR" };

    print $s CloudAuth::Test::request_text(path => $path);
    local $/;
    my $raw = <$s>;
    close $s;

    return CloudAuth::Test::parse_response($raw);
}

###########################################################################
# by client certificate

my $r = https_get('/api/x', 'alice');
is($r->{status}, 200, 'certificate: alice (team A) is served');
is(team_of(token_of($r)), 'team-a', 'certificate: alice gets team A\'s token');

$r = https_get('/api/x', 'bob');
is($r->{status}, 200, 'certificate: bob (team B) is served');
is(team_of(token_of($r)), 'team-b', 'certificate: bob gets team B\'s token');

my %seen;
for my $i (1 .. 6) {
    my $who = $i % 2 ? 'alice' : 'bob';
    $seen{$who}{ team_of(token_of(https_get("/api/$i", $who))) }++;
}
is_deeply(\%seen, { alice => { 'team-a' => 3 }, bob => { 'team-b' => 3 } },
          'certificate: team A\'s certificate never gets team B\'s token, '
          . 'nor the other way');
is(count(), 2, 'certificate: one token request per team');

$r = https_get('/api/x', 'eve');
is($r->{status}, 403, 'certificate: a certificate in no team: 403');
like(errlog(), qr/\[warn\].*cloudauth\x20\$team_by_cert:\x20the\x20credential's
                  \x20name\x20is\x20empty,\x20answered\x20403/x,
     'certificate: the error log says the name was empty');

$r = https_get('/api/x');
is($r->{status}, 400, 'certificate: none at all: nginx\'s own 400');
is(count(), 2, 'certificate: no token requested for those');

###########################################################################
# by auth_request

$r = $t->http_get('/ar/x', 'X-Api-Key' => 'key-alice');
is($r->{status}, 200, 'auth_request: served');
is(team_of(token_of($r)), 'team-a', 'auth_request: team A\'s token');

$r = $t->http_get('/ar/x', 'X-Api-Key' => 'key-bob');
is(team_of(token_of($r)), 'team-b', 'auth_request: team B\'s token');

$r = $t->http_get('/ar/x', 'X-Api-Key' => 'key-nobody');
is($r->{status}, 401, 'auth_request: the auth service\'s 401');

my $mark = length $t->error_log;
my $ghost = $t->http_get('/ar/x', 'X-Api-Key' => 'key-ghost');
is($ghost->{status}, 403, 'auth_request: a team with no credential: 403');
like(errlog($mark),
     qr/\[error\].*cloudauth\x20\$team_by_auth:\x20"team-ghost"\x20names
        \x20no\x20credential,\x20answered\x20403/x,
     'auth_request: an error line names the value');
is(count(), 2, 'auth_request: no new token request');

###########################################################################
# by auth_basic

$r = $t->http_get('/basic/x', Authorization => 'Basic '
                  . MIME::Base64::encode_base64('alice:pw-alice', ''));
is($r->{status}, 200, 'auth_basic: alice served');
is(team_of(token_of($r)), 'team-a', 'auth_basic: team A\'s token, '
   . 'her Basic credentials replaced');

$r = $t->http_get('/basic/x', Authorization => 'Basic '
                  . MIME::Base64::encode_base64('bob:pw-bob', ''));
is(team_of(token_of($r)), 'team-b', 'auth_basic: bob: team B\'s token');

$r = $t->http_get('/basic/x', Authorization => 'Basic '
                  . MIME::Base64::encode_base64('alice:wrong', ''));
is($r->{status}, 401, 'auth_basic: a wrong password: 401');

###########################################################################
# the name from a header: any value the client sends

$r = $t->http_get('/hdr/x', 'X-Team' => 'team-a');
is(team_of(token_of($r)), 'team-a', 'header: team-a');

# the names are looked up in a sorted array: each found, case matters

$r = $t->http_get('/hdr/x', 'X-Team' => 'team-b');
is(team_of(token_of($r)), 'team-b', 'header: team-b');

$r = $t->http_get('/hdr/x', 'X-Team' => 'TEAM-A');
is($r->{status}, 403, 'header: TEAM-A is not team-a: 403');

$r = $t->http_get('/hdr/x', 'X-Team' => 'team-');
is($r->{status}, 403, 'header: a prefix of a name: 403');

my $empty = $t->http_get('/hdr/x');
is($empty->{status}, 403, 'header: none: 403');

my $unknown = $t->http_get('/hdr/x', 'X-Team' => 'team-c');
is($unknown->{status}, 403, 'header: a name no credential has: 403');
is($unknown->{body}, $empty->{body},
   'header: the same answer for an unknown name and for none');

$r = $t->http_get('/hdr/x', 'X-Team' => 'people.sts');
is($r->{status}, 403, 'header: a name with ".": 403');

$mark = length $t->error_log;
$r = $t->http_get('/hdr/x', 'X-Team' => qq{te"am\\\x01\xff} . ('x' x 200));
is($r->{status}, 403, 'header: a hostile name: 403');
my ($line) = errlog($mark) =~ /^(.*names no credential.*)$/m;
like($line // '', qr/cloudauth\x20\$http_x_team:\x20
                     "te\\x22am\\x5c\\x01\\xffx{56}\.\.\."\x20names/x,
     'header: the value logged escaped and cut at 64 bytes');

# the credential's own rules still apply

$r = $t->http_get('/hdr/x', 'X-Team' => 'people',
                  'X-User' => 'ann@example.com');
is($r->{status}, 200, 'header: people for ann@example.com');
$r = $t->http_get('/hdr/x', 'X-Team' => 'people', 'X-User' => 'ann@evil.com');
is($r->{status}, 403, 'header: "subjects=" of the credential chosen applies');
$r = $t->http_get('/hdr/x', 'X-Team' => 'people');
is($r->{status}, 403, 'header: so does "subjects=" without a subject');
$r = $t->http_get('/hdr/x', 'X-Team' => 'team-a', 'X-User' => 'ann@x.com');
is($r->{status}, 403, 'header: a subject for a credential that takes none');
like(errlog(), qr/credential\x20"team-a":\x20the\x20credential\x20takes
                  \x20no\x20subject,\x20answered\x20403/x,
     'header: says so');

###########################################################################
# resolved once per request: the redirect to /second/ keeps team A, though
# $team_by_uri says team B there

$r = $t->http_get('/first/x');
is($r->{status}, 200, 'redirect: served from the second location');
is(team_of(token_of($r)), 'team-a', 'redirect: with the name resolved '
   . 'first, team A');

###########################################################################
# a rate limit per team: 1 a minute, burst 2, $cloudauth_credential as the
# key, known in limit_req's phase already

my @a = map { https_get("/limited/$_", 'alice')->{status} } 1 .. 4;
is("@a", '200 200 200 429', 'limit_req: team A limited after its burst');
is(https_get('/limited/x', 'bob')->{status}, 200,
   'limit_req: team B has its own limit');
is(https_get('/limited/x', 'eve')->{status}, 403,
   'limit_req: no team: no limit applies (empty key), refused anyway');

###########################################################################
# the JSON access log

$t->stop;

my @log = map { my $l = $_; my $j = eval { decode_json($l) };
                $j // { bad => $l } }
          grep { length } split /\n/, $t->read_file('audit.log');

is_deeply([map { $_->{bad} } grep { $_->{bad} } @log], [],
          'audit log: every line is JSON');

my $audit = $t->read_file('audit.log');
my @leaked = grep { index($audit, $_) >= 0 } tokens();
is("@leaked", '', 'audit log: no token');

sub entry {
    my (%want) = @_;
    my ($e) = grep { my $l = $_;
                     !grep { ($l->{$_} // '') !~ $want{$_} } keys %want }
              @log;
    return $e;
}

my $e = entry(cert => qr/CN=alice/, request => qr{^GET /api/x$},
              status => qr/^200$/);
is($e->{credential}, 'team-a', 'audit log: alice as team-a');
like($e->{cache}, qr/^(MISS|HIT)$/, 'audit log: cache status');
like($e->{token_age}, qr/^\d+$/, 'audit log: token age');
cmp_ok($e->{token_age}, '<', 600, 'audit log: a token just fetched is '
       . 'young (a sanity bound, not timing)');
like($e->{token_ttl}, qr/^\d+$/, 'audit log: token ttl');

$e = entry(user => qr/^alice$/, status => qr/^401$/);
is($e->{credential}, '', 'audit log: a wrong password names no credential');

$e = entry(request => qr{^GET /hdr/x$}, subject => qr/ann\@evil/);
ok($e, 'audit log: the subject asked for, refused') and
    is_deeply([@$e{qw(credential status error)}],
              ['people', '403', 'subject not allowed by "subjects="'],
              'audit log: as whom, the answer and why');

$e = entry(request => qr{^GET /hdr/x$}, subject => qr/ann\@example/);
is($e->{credential}, 'people', 'audit log: people for ann@example.com');

$e = entry(request => qr{^GET /second/x$});
is($e && $e->{credential}, 'team-a', 'audit log: after the redirect, the '
   . 'credential used');

$e = entry(cert => qr/CN=eve/, request => qr{^GET /api/x$});
is_deeply([@$e{qw(credential status error)}],
          ['', '403', 'the credential\'s name is empty'],
          'audit log: no team');

is($t->read_file('audit.log') =~ tr/\n//, scalar @log,
   'audit log: one line per request');

###########################################################################
# nginx -t

my ($rc, $out) = $t->nginx_t(<<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth $http_x_team; }
    }
EOF
isnt($rc, 0, 'nginx -t: a variable and no credential fails');
like($out, qr/\[emerg\].*cloudauth\x20"\$http_x_team":\x20no
              \x20cloudauth_credential\x20is\x20defined/x,
     'nginx -t: says so');

my $cred = "cloudauth_credential c type=oauth2_client_credentials "
           . "token_url=https://127.0.0.1:1/t client_id=x "
           . "client_secret_file=$d/team-a.secret;";

($rc, $out) = $t->nginx_t(<<"EOF");
    $cred
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth \$no_such_variable; }
    }
EOF
isnt($rc, 0, 'nginx -t: an unknown variable fails');
like($out, qr/\[emerg\].*unknown "no_such_variable" variable/,
     'nginx -t: names it');

($rc, $out) = $t->nginx_t(<<"EOF");
    $cred
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth nosuch; }
    }
EOF
isnt($rc, 0, 'nginx -t: a fixed unknown name still fails');
like($out, qr/cloudauth "nosuch": no such cloudauth_credential/,
     'nginx -t: says so');

($rc, $out) = $t->nginx_t(<<"EOF");
    $cred
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth \$http_x_team; cloudauth_subject \$arg_u; }
    }
EOF
is($rc, 0, 'nginx -t: a variable with credentials passes') or diag $out;
unlike($out, qr/\[warn\]/, 'nginx -t: no warning: "c" takes no subject');

($rc, $out) = $t->nginx_t(<<"EOF");
    $cred
    cloudauth_credential anyone type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { cloudauth \$http_x_team; cloudauth_subject \$arg_u; }
    }
EOF
is($rc, 0, 'nginx -t: a subject credential without subjects=: passes')
    or diag $out;
like($out, qr/\[warn\].*credential\x20"anyone"\x20has\x20no\x20"subjects=":
              \x20a\x20client\x20may\x20obtain/x,
     'nginx -t: but warns, naming it');

$t->check_log_ok;

done_testing;
