#!/usr/bin/perl

# cloudauth_status: the JSON document and the Prometheus text move exactly
# as requests and token fetches happen (hits, misses, waiters, fetches,
# failures, invalidations, states), are shared by the workers, survive a
# reload, and never show a token; $cloudauth_cache_status and
# $cloudauth_token_ttl in the access log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    log_format st '$request_uri $status $cloudauth_cache_status '
                  '$cloudauth_token_ttl';
    access_log %%TESTDIR%%/status.log st;

    cloudauth_zone 1m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+";

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            cloudauth google;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /people/ {
            cloudauth people;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location = /status {
            cloudauth_status;
        }
    }
EOF

my @bodies;

sub status {
    my $r = $t->http_get('/status');
    push @bodies, $r->{body};
    return {} unless $r->{status} == 200;
    return eval { decode_json($r->{body}) } || {};
}

sub prom {
    my (%h) = @_;
    my $r = $t->http_get($h{path} // '/status?format=prometheus',
                         %{ $h{headers} || {} });
    push @bodies, $r->{body};
    return $r;
}

sub metric {
    my ($text, $name, $labels) = @_;
    my ($v) = $text =~ /^\Q$name\E\{\Q$labels\E\} (\d+)$/m;
    return $v;
}

sub entry {
    my ($st, $cred, $subject) = @_;
    my ($e) = grep { $_->{subject} eq ($subject // '') }
              @{ $st->{credentials}{$cred}{entries} || [] };
    return $e || {};
}

# empty

my $r = $t->http_get('/status');
is($r->{status}, 200, 'status answers 200');
like($r->{headers}{'content-type'} // '', qr{^application/json},
     'status is JSON');

my $st = status();
is_deeply([sort keys %{ $st->{credentials} }], [qw(google people)],
          'every credential is listed');
is($st->{credentials}{google}{type}, 'google_service_account', 'its type');
is_deeply($st->{credentials}{google}{entries}, [], 'no entries yet');
is_deeply($st->{uploads}, { active => 0, completed => 0, failed => 0,
                            bytes => 0 }, 'upload counters at zero');

# one miss, then hits, over separate connections (both workers)

$t->http_get("/api/$_") for 1 .. 6;

$st = status();
my $e = entry($st, 'google');
is($e->{state}, 'valid', 'state valid');
is($e->{misses}, 1, 'one miss');
is($e->{hits}, 5, 'five hits');
is($e->{fetches}, 1, 'one fetch');
is($e->{waiters}, 1, 'the missing request waited');
is($e->{fetch_failures}, 0, 'no failure');
cmp_ok($e->{expires_in}, '>', 3500, 'expires_in');
cmp_ok($e->{expires_in}, '<=', 3600, 'expires_in at most the lifetime');
cmp_ok(abs($e->{last_refresh} - time), '<', 30, 'last_refresh is now');
is($st->{credentials}{google}{hits}, 5, 'credential sums hits');

# a cold burst: one fetch; the requests handled before it landed are
# misses that waited, any handled after it are hits

my @r = $t->burst('/people/x', 20, 'X-User' => 'burst@example.com');
is(scalar(grep { $_->{status} == 200 } @r), 20, 'burst answered');

$st = status();
$e = entry($st, 'people', 'burst@example.com');
is($e->{fetches}, 1, 'burst: one fetch');
is($e->{misses} + $e->{hits}, 20, 'burst: 20 misses and hits');
cmp_ok($e->{misses}, '>=', 1, 'burst: misses');
is($e->{waiters}, $e->{misses}, 'burst: every miss waited');
my $burst = $e;

# a refused token: the upstream's 401 invalidates it

my ($tok) = $t->issued_tokens;
$t->revoke($tok);
$r = $t->http_get('/api/revoked');
is($r->{status}, 401, 'revoked token: the upstream says 401');

$e = entry(status(), 'google');
is($e->{invalidations}, 1, 'one invalidation');

$r = $t->http_get('/api/after');
is($r->{status}, 200, 'a new token after the invalidation');
$e = entry(status(), 'google');
is($e->{fetches}, 2, 'second fetch after the invalidation');

# a failing fetch: backoff, last_error, fetch_failures

$t->token_set(status => 400, error => 'invalid_grant',
              error_description => 'Invalid JWT Signature.');
$r = $t->http_get('/people/y', 'X-User' => 'fail@example.com');
is($r->{status}, 502, 'failing fetch: 502');

$e = entry(status(), 'people', 'fail@example.com');
is($e->{state}, 'backoff', 'state backoff');
is($e->{fetch_failures}, 1, 'one fetch failure');
is($e->{fetches}, 0, 'fetches counts the successful ones');
like($e->{last_error}, qr/invalid_grant/, 'last_error: the error');
like($e->{last_error}, qr/Invalid JWT Signature/, 'last_error: description');

$r = $t->http_get('/people/y', 'X-User' => 'fail@example.com');
is($r->{status}, 502, 'during back-off: 502');
$e = entry(status(), 'people', 'fail@example.com');
is($e->{fetch_failures}, 1, 'during back-off: no new fetch');
is($e->{misses}, 2, 'during back-off: the miss counted');

# refreshing: a 2 s token in its last second, a slow refresh (times
# stretched under valgrind)

my $life = 2 * $t->tf;
$t->token_set(expires_in => $life);
$t->http_get('/people/z', 'X-User' => 'short@example.com');
sleep 0.6 * $life;
$t->token_set(expires_in => 3600, delay => 0.75 * ($life < 6 ? $life : 6));
$r = $t->http_get('/people/z', 'X-User' => 'short@example.com');
is($r->{status}, 200, 'stale request served');

$e = entry(status(), 'people', 'short@example.com');
is($e->{state}, 'refreshing', 'state refreshing');
ok($t->wait_for(sub { (entry(status(), 'people', 'short@example.com')
                          ->{state} // '') eq 'valid' }, 5),
   'valid again after the refresh');
$t->token_set;

# the Prometheus view of the same numbers

$r = prom();
is($r->{status}, 200, 'prometheus answers');
like($r->{headers}{'content-type'} // '', qr{^text/plain; version=0\.0\.4},
     'prometheus content type');
my $p = $r->{body};
like($p, qr/^# TYPE cloudauth_cache_hits_total counter$/m, 'TYPE lines');
is(metric($p, 'cloudauth_cache_hits_total', 'credential="google"'),
   entry(status(), 'google')->{hits}, 'hits as in JSON');
is(metric($p, 'cloudauth_token_fetches_total',
          'credential="google",result="ok"'), 2, 'fetches ok');
is(metric($p, 'cloudauth_token_fetches_total',
          'credential="people",result="error"'), 1, 'fetches failed');
is(metric($p, 'cloudauth_invalidations_total', 'credential="google"'), 1,
   'invalidations');
is(metric($p, 'cloudauth_cache_entries', 'credential="people"'), 3,
   'entries');
like($p, qr/^cloudauth_uploads_total\{result="completed"\} 0$/m,
     'upload counters');

$r = prom(path => '/status',
          headers => { Accept => 'text/plain; version=0.0.4' });
like($r->{body}, qr/^# TYPE /m, 'prometheus by Accept header');

# access log variables

my @log = split /\n/, $t->read_file('status.log');
my ($first) = grep { m{^/api/1 } } @log;
like($first // '', qr{^/api/1 200 MISS \d+$}, 'access log: MISS and ttl');
my ($hit) = grep { m{^/api/2 } } @log;
like($hit // '', qr{^/api/2 200 HIT \d+$}, 'access log: HIT');
my ($ttl) = ($hit // '') =~ / (\d+)$/;
ok(defined $ttl && $ttl > 3500 && $ttl <= 3600, 'access log: ttl');
is(scalar(grep { m{^/people/x 200 (MISS|WAIT) } } @log), $burst->{misses},
   'access log: MISS or WAIT for the burst');
is(scalar(grep { m{^/people/x 200 HIT } } @log), $burst->{hits},
   'access log: HIT for the rest of the burst');
cmp_ok(scalar(grep { m{^/people/x 200 MISS } } @log), '<=', 2,
       'access log: at most one MISS per worker');
is(scalar(grep { m{^/people/y 502 ERROR } } @log), 2, 'access log: ERROR');
is(scalar(grep { m{^/people/z 200 STALE } } @log), 1, 'access log: STALE');

# counters survive a reload

my $before = entry(status(), 'google');
$t->reload;
my $after = entry(status(), 'google');
is($after->{hits}, $before->{hits}, 'hits survive reload');
is($after->{fetches}, $before->{fetches}, 'fetches survive reload');
is($after->{state}, 'valid', 'the token survives reload');

# no token, assertion or key in any answer or log

is(join(' ', $t->leaks_in(@bodies)), '', 'no secret in status output');
is(join(' ', $t->leaks), '', 'no secret in the logs');

$t->check_log_ok;

done_testing;
