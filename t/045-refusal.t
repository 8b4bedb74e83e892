#!/usr/bin/perl

# A refused request goes back to nginx as its status: error_page applies
# (to a named location or a URI), the access log has the status, and
# $cloudauth_error the short reason, also after error_page's redirect.
# Each refusal is one line in the error log with the request's context,
# at error for 502, the back-off's fast failures included.  Before, the
# module answered with its own body and NGX_DONE: error_page never
# applied and the back-off path logged nothing.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 5s;

    log_format refused '$uri $status "$cloudauth_error"';
    access_log %%TESTDIR%%/refused.log refused;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+@example\.com";

    server {
        listen 127.0.0.1:%%PORT%%;

        location /named/ {
            cloudauth google;
            error_page 502 = @sorry;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /uri/ {
            cloudauth google;
            error_page 502 /sorry.txt;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /plain/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /people/ {
            cloudauth people;
            cloudauth_subject $http_x_user;
            error_page 403 = @forbidden;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location @sorry {
            return 503 "sorry: $cloudauth_error\n";
        }

        location = /sorry.txt {
            internal;
            return 200 "page: $cloudauth_error\n";
        }

        location @forbidden {
            return 403 "forbidden: $cloudauth_error\n";
        }
    }
EOF

$t->token_set(status => 503, error => 'backendError',
              error_description => 'try again later');

my $mark = length $t->error_log;

my $r = $t->http_get('/named/x');
is($r->{status}, 503, 'error_page 502 = @sorry applies');
is($r->{body}, "sorry: token request failed\n", '$cloudauth_error there');

$r = $t->http_get('/named/y');
is($r->{status}, 503, 'backing off: error_page applies too');
is($r->{body}, "sorry: token endpoint failing, backing off\n",
   'with the back-off reason');

$r = $t->http_get('/uri/z');
is($r->{status}, 502, 'error_page 502 /sorry.txt: the status stays');
is($r->{body}, "page: token endpoint failing, backing off\n",
   '$cloudauth_error after a URI redirect');

$r = $t->http_get('/plain/w');
is($r->{status}, 502, 'no error_page: 502');
like($r->{body}, qr/502 Bad Gateway/, 'nginx\'s own error page');

$r = $t->http_get('/people/v', 'X-User' => 'mallory@evil.example');
is($r->{status}, 403, 'a refused subject: 403');
is($r->{body}, "forbidden: subject not allowed by \"subjects=\"\n",
   'error_page 403 with the reason');

# the logs: one error line per refused request, with its context

my @refused = grep { /cloudauth: credential "google": .*answered 502/ }
              split /\n/, substr $t->error_log, $mark;
is(scalar @refused, 4, 'four 502s, four lines') or diag explain \@refused;
is(scalar(grep { /\[error\]/ } @refused), 4, 'at error');

my $i = 0;
for my $uri (qw(/named/x /named/y /uri/z /plain/w)) {
    like($refused[$i++] // '',
         qr/client: 127\.0\.0\.1, server: , request: "GET \Q$uri\E HTTP\/1\.0"/,
         "$uri: the line has the request");
}

like($t->error_log, qr/\[warn\].*credential "people": subject not allowed .*answered 403.*request: "GET \/people\/v/,
     'the 403: a warn line with the request');

ok($t->wait_for(sub { $t->read_file('refused.log') =~ m{^/people/v }m }),
   'access log written');
my $log = $t->read_file('refused.log');
like($log, qr{^/named/x 503 "token request failed"$}m,
     'access log: the status and $cloudauth_error');
like($log, qr{^/plain/w 502 "token endpoint failing, backing off"$}m,
     'access log: the back-off');

$t->token_set;
$t->check_log_ok;

done_testing;
