#!/usr/bin/perl

# Token endpoint failures: each kind gives the client a 502 with a short
# plain-text reason and an error-log line with the credential's name and
# the provider's words; then back-off: requests fail at once without a new
# token request; transient errors recover after about a second, Retry-After
# is honoured, terminal ones (invalid_grant, other 4xx) stay backed off.
# A token endpoint Date far off ours is logged as clock skew.
#
# Every kind has its own credential, so its own cache entry and back-off.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;
my $fast = 0.5 * $t->tf;

my @creds = qw(c503 c500 c502 c504 c408 c429 cgrant c403 cjson cnotoken
               cdrop ctimeout cskew);

my $conf = <<'EOF';
    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 2s;

    cloudauth_credential crefused type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%
        token_url=https://127.0.0.1:%%PORT_CLOSED%%/token;
EOF

$conf .= <<"EOF" for @creds;
    cloudauth_credential $_ type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
EOF

$conf .= "    server {\n        listen 127.0.0.1:%%PORT%%;\n";

$conf .= <<"EOF" for @creds, 'crefused';
        location /$_/ {
            cloudauth $_;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }
EOF

$conf .= "    }\n";

$t->run($conf);

my %failed_at;

# error-log lines (error or warn level) written after MARK that name CRED
sub logged {
    my ($mark, $cred) = @_;
    return grep { /\[(error|warn)\]/ && /\b\Q$cred\E\b/ }
           split /\n/, substr $t->error_log, $mark;
}

# fails(CRED, REGEX for its log line, [token requests expected], behaviour)
sub fails {
    my ($cred, $re, $requests, %b) = @_;

    $t->token_set(%b);
    my $mark = length $t->error_log;

    my $n = $t->token_count;
    my $r = $t->http_get("/$cred/x");
    $failed_at{$cred} = time;

    is($r->{status}, 502, "$cred: 502");
    ok(length $r->{body} && length $r->{body} < 1024, "$cred: short answer")
        or diag $r->{body};

    my $got = $t->token_count - $n;
    ok((grep { $got == $_ } @$requests), "$cred: token requests @$requests")
        or diag "got $got";

    my @lines;
    ok($t->wait_for(sub { grep { $_ =~ $re } @lines = logged($mark, $cred) },
                    1), "$cred: logged")
        or diag explain [ logged($mark, $cred) ];

    # back-off: at once, without a token request

    $n = $t->token_count;
    $r = $t->http_get("/$cred/y");
    is($r->{status}, 502, "$cred: backing off: 502");
    cmp_ok($r->{latency}, '<', $fast, "$cred: backing off: at once");
    is($t->token_count, $n, "$cred: backing off: no token request");

    # one line per refused request, with the request (the back-off one too)
    my @refused = grep { /\[error\].*: .*answered 502, client: 127\.0\.0\.1, .*request: "GET \/\Q$cred\E\/[xy] HTTP/ }
                  logged($mark, $cred);
    is(scalar @refused, 2, "$cred: each refusal logged with its request")
        or diag explain \@refused;
}

my $desc = 'Invalid JWT: Token must be a short-lived token (60 minutes) and '
           . 'in a reasonable timeframe. Check your iat and exp values';

fails('c503', qr/backend_error|Backend Error/, [1], status => 503,
      error => 'backend_error', error_description => 'Backend Error');
fails("c$_", qr/\S/, [1], status => $_) for 500, 502, 504, 408;
fails('cgrant', qr/invalid_grant/, [1], status => 400,
      error => 'invalid_grant', error_description => $desc);
like($t->error_log, qr/short-lived token/, 'cgrant: error_description logged');
fails('c403', qr/unauthorized_client|Client is unauthorized/, [1],
      status => 403, error => 'unauthorized_client',
      error_description => 'Client is unauthorized to retrieve access '
                           . 'tokens using this method');
fails('cjson', qr/\S/, [1], body => '{"access_token": "ya29.trunc');
fails('cnotoken', qr/\S/, [1], body => '{"token_type":"Bearer"}');
fails('crefused', qr/\S/, [0]);

# libcurl may retry once on a fresh connection when a reused one dies
fails('cdrop', qr/\S/, [1, 2], drop => 1);

my $t0 = time;
fails('ctimeout', qr/\S/, [1], delay => 4);
cmp_ok($failed_at{ctimeout} - $t0, '<', 3.9, 'ctimeout: cloudauth_timeout');

# transient: recovers after about a second, with one token request

$t->token_set;
my $n = $t->token_count;

my $ok = $t->wait_for(sub { $t->http_get('/c503/x')->{status} == 200 }, 5);
ok($ok, 'c503: recovered');
cmp_ok(time - $failed_at{c503}, '<', 10, 'c503: within a few seconds');
is($t->token_count, $n + 1, 'c503: one token request to recover');

# Retry-After is honoured: 3 s rather than about 1 s

fails('c429', qr/429|rate|quota/i, [1], status => 429, retry_after => 3,
      error => 'rate_limit_exceeded', error_description => 'Quota exceeded');
$t->token_set;
$n = $t->token_count;

$ok = $t->wait_for(sub { $t->http_get('/c429/x')->{status} == 200 }, 6);
ok($ok, 'c429: recovered');
cmp_ok(time - $failed_at{c429}, '>=', 2.8, 'c429: not before Retry-After');
is($t->token_count, $n + 1, 'c429: one token request to recover');

# terminal: still backing off well after a transient back-off would end

my $wait = $failed_at{c403} + 2.5 - time;
sleep $wait if $wait > 0;

for my $cred (qw(cgrant c403)) {
    $n = $t->token_count;
    my $r = $t->http_get("/$cred/x");
    is($r->{status}, 502, "$cred: terminal: still 502");
    cmp_ok($r->{latency}, '<', $fast, "$cred: terminal: at once");
    is($t->token_count, $n, "$cred: terminal: no token request");
}

# clock skew: Date two minutes ahead

$t->token_set(date_offset => 120);
my $mark = length $t->error_log;
is($t->http_get('/cskew/x')->{status}, 200, 'Date 2 minutes ahead: token');
ok($t->wait_for(sub { grep { /clock/i } logged($mark, 'cskew') }, 2),
   'clock skew logged');
$t->token_set;

# every assertion sent was good: the failures were injected

$t->token_verified_ok;
$t->check_log_ok;

done_testing;
