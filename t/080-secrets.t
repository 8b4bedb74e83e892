#!/usr/bin/perl

# Secrets stay secret: after injection, subjects, a refresh, an upstream
# 401 and token endpoint failures, with the error log at debug level, no
# issued token, no line of the private key and no assertion (nor its
# signature) is in error.log, access.log, nginx's stderr or any page sent
# to the client.
#
# The echo upstream is asked not to echo ("noecho"): an upstream that sends
# the token back would put it into nginx's debug lines itself.
#
# Last, $cloudauth_token in proxy_set_header: nginx's own debug lines show
# variable values and proxied headers; the worker masks the tokens it
# handed out through the variable wherever they appear.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    log_format full '$remote_addr "$request" $status $upstream_status '
                    '"$http_x_user_email" $request_time';
    access_log %%TESTDIR%%/access.log full;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential delegated type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=[a-z]+@example\.com";
    cloudauth_credential short type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
    cloudauth_credential failing type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /sub/ {
            cloudauth delegated;
            cloudauth_subject $http_x_user_email;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /short/ {
            cloudauth short;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /failing/ {
            cloudauth failing;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /var/ {
            cloudauth google;
            proxy_set_header X-Token $cloudauth_token;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
    }
EOF

my @pages;

sub get {
    my ($path, %h) = @_;
    my $r = $t->http_get("$path?noecho", %h);
    push @pages, $r->{raw};
    return $r->{status};
}

is(get('/api/x', Authorization => 'Basic dXNlcjpwYXNz'), 200, 'injected');
is(get('/api/y'), 200, 'cached');
is(get('/sub/x', 'X-User-Email' => 'alice@example.com'), 200, 'subject');
is(get('/sub/x', 'X-User-Email' => 'eve@evil.com'), 403, 'refused subject');

is(get('/api/401'), 401, 'upstream 401');
is(get('/api/x'), 200, 'new token after the 401');

$t->token_set(expires_in => 4);
is(get('/short/x'), 200, 'short-lived token');
sleep 2.3;
is(get('/short/x'), 200, 'refresh ahead');
$t->wait_for(sub { $t->token_count == 5 }, 2);
sleep 0.5;
is(get('/short/x'), 200, 'refreshed token');

$t->token_set(status => 400, error => 'invalid_grant',
              error_description => 'Invalid JWT Signature.');
is(get('/failing/x'), 502, 'token endpoint failure');
is(get('/failing/x'), 502, 'backing off');
$t->token_set;

# the upstream did get tokens

my @auth = map { @{ $_->{authorization} } } $t->upstream_requests;
ok((grep { /^Bearer ya29\.fake-/ } @auth), 'tokens were injected');

my $mark = length $t->error_log;
is(get('/var/x'), 200, '$cloudauth_token in proxy_set_header');

$t->stop;

my $log = substr $t->error_log, 0, $mark;
my $var_log = substr $t->error_log, $mark;

# what is looked for, and where

my @secrets = $t->secrets;
my @tokens = $t->issued_tokens;
cmp_ok(scalar @tokens, '>=', 5, 'tokens issued: ' . @tokens);
cmp_ok(scalar(grep { /^ey/ } @secrets), '>=', 3, 'assertions sent');
cmp_ok(scalar(grep { /^[A-Za-z0-9+\/=]{60,}$/ } @secrets), '>=', 20,
       'private key lines');
like($t->error_log, qr/\[debug\]/, 'error log at debug level');
like($t->error_log, qr/cloudauth/, 'error log has cloudauth lines');

my @texts = ($log, $t->access_log, $t->read_file('stderr.log'), @pages);
my @leaks = $t->leaks_in(@texts);
is(scalar @leaks, 0, 'no secret in logs or pages');
show(\@leaks, @texts);

my @var = $t->leaks_in($var_log);
is(scalar @var, 0, '$cloudauth_token not in debug lines');
show(\@var, $var_log);
like($var_log, qr/http script var: "\[hidden\]"/,
     'the variable value is masked');

sub show {
    my ($leaks, @texts) = @_;
    for my $s (@$leaks) {
        my $kind = $s =~ /^ya29/ ? 'token' : $s =~ /^ey/ ? 'assertion'
                 : 'key or signature';
        diag "$kind leaked:";
        diag substr($_, 0, 200) for grep { index($_, $s) >= 0 }
                                    split /\n/, join "\n", @texts;
    }
}

$t->check_log_ok;

done_testing;
