#!/usr/bin/perl

# The token stays in the location that injects it.  After an internal
# redirect (error_page to a named location, try_files, X-Accel-Redirect) or
# in a subrequest (mirror, SSI, auth_request), a location without
# "cloudauth" sees the client's own Authorization as it was received, and
# a location with another credential injects its own.  Before, the
# injected header was left in the request and followed it everywhere.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;
$t->make_key(file => 'other.json');
$t->write_file('page.html', "before\n<!--# include virtual=\"/plain/ssi\" -->"
                            . "\nafter\n", 0644);

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;

    log_format auth '$uri "$http_authorization"';
    access_log %%TESTDIR%%/auth.log auth;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential other type=google_service_account
        key_file=%%TESTDIR%%/other.json scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        proxy_intercept_errors on;

        location /a/ {
            cloudauth google;
            error_page 404 = @plain;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /b/ {
            cloudauth google;
            error_page 404 = @other;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /c/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /d/ {
            cloudauth google;
            error_page 404 = @auth;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /e/ {
            cloudauth google;
            root %%TESTDIR%%;
            try_files /nonexistent @plain;
        }

        location /h/ {
            cloudauth google header=X-Token;
            error_page 404 = @plain;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /m/ {
            cloudauth google;
            mirror /mirror;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /s/ {
            cloudauth google;
            ssi on;
            alias %%TESTDIR%%/;
        }

        location = /mirror {
            internal;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%/mirrored$request_uri;
        }

        location = /auth {
            internal;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%/auth;
        }

        location @plain {
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location @other {
            cloudauth other;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location @auth {
            auth_request /auth;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /plain/ {
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        # $http_authorization read while the token is in: cached by nginx
        location /v/ {
            cloudauth google;
            proxy_set_header X-Dbg $http_authorization;
            error_page 404 = @pass;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /w/ {
            cloudauth google;
            proxy_set_header X-Dbg $http_authorization;
            error_page 404 = @echo;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location @pass {
            proxy_set_header Authorization $http_authorization;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location @echo {
            return 200 "auth=$http_authorization\n";
        }

        location /plainset/ {
            set $a $http_authorization;
            proxy_set_header X-Copy $a;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF

my %mine = (Authorization => 'Bearer mine');

# what the upstream received, per request, in order
sub seen {
    my ($uri) = @_;
    return map { join(', ', @{ $_->{authorization} }) || 'none' }
           grep { $_->{uri} eq $uri } $t->upstream_requests;
}

sub header_seen {
    my ($uri, $name) = @_;
    return map { my $e = $_; join ', ', map { $_->[1] }
                 grep { lc $_->[0] eq lc $name } @{ $e->{headers} } }
           grep { $_->{uri} eq $uri } $t->upstream_requests;
}

my $r = $t->http_get('/c/x', %mine);
my ($google) = $r->{headers}{'x-echo-authorization'} =~ /^Bearer (\S+)$/;
ok($google && $google ne 'mine', 'google token injected');

# error_page to a named location without cloudauth

$r = $t->http_get('/a/404', %mine);
is($r->{status}, 404, 'error_page @plain: the plain location\'s 404');
is_deeply([seen('/a/404')], ["Bearer $google", 'Bearer mine'],
          'error_page: the client\'s header in @plain, not the token');

# error_page to a location with another credential

$r = $t->http_get('/b/404', %mine);
is($r->{status}, 404, 'error_page @other: its 404');
my @b = seen('/b/404');
is($b[0], "Bearer $google", 'google token first');
like($b[1] // '', qr/^Bearer (?!mine$)(?!\Q$google\E$)\S+$/,
     'then the other credential\'s own token');
is(scalar @b, 2, 'two upstream requests');

# X-Accel-Redirect to a plain location

$r = $t->http_get('/c/y?accel=/plain/accel', %mine);
is($r->{status}, 200, 'X-Accel-Redirect: 200');
is_deeply([seen('/plain/accel')], ['Bearer mine'],
          'X-Accel-Redirect: the client\'s header');

# try_files to a named location

$r = $t->http_get('/e/x', %mine);
is($r->{status}, 200, 'try_files: 200');
is_deeply([seen('/e/x')], ['Bearer mine'], 'try_files: the client\'s header');

# header= and a redirect: the client's X-Token is gone no further either

$r = $t->http_get('/h/404', %mine, 'X-Token' => 'client-token');
is($r->{status}, 404, 'header=: @plain\'s 404');
is_deeply([header_seen('/h/404', 'X-Token')],
          ["Bearer $google", 'client-token'],
          'header=: the token, then the client\'s own header in @plain');

# auth_request after a redirect: neither subrequest nor request has it

$r = $t->http_get('/d/404', %mine);
is($r->{status}, 404, 'auth_request after a redirect: @auth\'s 404');
is_deeply([seen('/auth')], ['Bearer mine'], 'auth_request subrequest');
is_deeply([seen('/d/404')], ["Bearer $google", 'Bearer mine'],
          'and the redirected request');

# mirror: the mirror subrequest goes elsewhere without the token

$r = $t->http_get('/m/x', %mine);
is($r->{status}, 200, 'mirror: 200');
is_deeply([seen('/m/x')], ["Bearer $google"], 'the request has the token');
ok($t->wait_for(sub { seen('/mirrored/m/x') }, 5), 'the mirror arrived');
is_deeply([seen('/mirrored/m/x')], ['Bearer mine'],
          'the mirror has the client\'s header');

# SSI include from a location with a token into a plain one

$r = $t->http_get('/s/page.html', %mine);
is($r->{status}, 200, 'SSI: 200');
like($r->{body}, qr{path: /plain/ssi}, 'the include was served');
is_deeply([seen('/plain/ssi')], ['Bearer mine'],
          'SSI subrequest: the client\'s header');

# no Authorization from the client: none at all after the redirect

$r = $t->http_get('/a/404');
is_deeply([(seen('/a/404'))[2, 3]], ["Bearer $google", 'none'],
          'no client header: none in @plain');

# $http_authorization read before the redirect is read again after it

$r = $t->http_get('/v/404', %mine);
is_deeply([seen('/v/404')], ["Bearer $google", 'Bearer mine'],
          'a cached $http_authorization: the client\'s in @pass');
is_deeply([header_seen('/v/404', 'X-Dbg')], ["Bearer $google", ''],
          'the cloudauth location itself saw the token');

$r = $t->http_get('/w/404', %mine);
is($r->{body}, "auth=Bearer mine\n", 'return in @echo: the client\'s');

$r = $t->http_get('/c/y?accel=/plainset/z', %mine);
is_deeply([header_seen('/plainset/z', 'X-Copy')], ['Bearer mine'],
          'X-Accel-Redirect, set in the rewrite phase: the client\'s');

# the access log of a cloudauth location logs what the client sent

ok($t->wait_for(sub { $t->read_file('auth.log') =~ m{^/plainset/z }m }),
   'access log written');
my $log = $t->read_file('auth.log');
like($log, qr{^/c/x "Bearer mine"$}m,
     'access log: $http_authorization is the client\'s');
unlike($log, qr/\Q$google\E/, 'no token in the access log');

is(scalar(grep { /Bearer \Q$google\E/ }
          map { join ' ', @{ $_->{authorization} } }
          grep { $_->{uri} !~ m{^/[abcdhmvw]/} } $t->upstream_requests),
   0, 'the google token reached no other location');

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
