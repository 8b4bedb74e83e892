#!/usr/bin/perl

# Per-cycle state follows the cycle: reloads with "header=", to a
# configuration without credentials, without any cloudauth directive and
# back, a zone resize, and a reload that fails (its new "listen" cannot
# bind) after which workers the master starts from the old cycle must
# still serve tokens.  Run under AddressSanitizer too (make test-asan): the
# mask patterns of "header=" once pointed into a freed pool, and the zone
# pointers into a zone a failed reload had unmapped.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

# conf(zone => SIZE, creds => 0|1, cloudauth => 0|1, busy => 0|1)
sub conf {
    my (%o) = (zone => '1m', creds => 1, cloudauth => 1, busy => 0, @_);

    my $c = $o{cloudauth} ? "    cloudauth_zone $o{zone};\n" : '';

    $c .= <<'EOF' if $o{creds};
    cloudauth_trusted_certificate %%CA%%;

    cloudauth_credential google type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;
EOF

    my $busy = $o{busy} ? 'listen 127.0.0.1:%%PORT_BUSY%%;' : '';
    my $api = $o{creds} ? 'cloudauth google;' : '';
    my $hdr = $o{creds} ? 'cloudauth google header=X-Api-Token '
                          . '"format=Token %s";' : '';
    my $status = $o{cloudauth} ? 'cloudauth_status;' : 'return 204;';

    return $c . <<"EOF";

    server {
        listen 127.0.0.1:%%PORT%%;
        $busy

        add_header X-Pid \$pid;

        location /api/ {
            $api
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /hdr/ {
            $hdr
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location = /status {
            $status
        }
    }
EOF
}

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

# N requests to each of /api/ and /hdr/: all answered with a token
sub served {
    my ($name, $n) = @_;
    my @bad;

    for my $i (1 .. ($n // 4)) {
        my $r = $t->http_get("/api/$i");
        push @bad, "/api/$i: $r->{status} " . auth($r)
            unless $r->{status} == 200 && auth($r) =~ /^Bearer ya29\./;

        $r = $t->http_get("/hdr/$i");
        push @bad, "/hdr/$i: $r->{status}"
            unless $r->{status} == 200
                   && $r->{body} =~ /^header: X-Api-Token: Token ya29\./m
                   && auth($r) eq 'none';
    }

    is(join(', ', @bad), '', "$name: tokens injected");
}

sub status_ok {
    my ($name) = @_;
    my $r = $t->http_get('/status');
    is($r->{status}, 200, "$name: status answers");
    my $st = eval { decode_json($r->{body}) };
    ok(ref $st eq 'HASH', "$name: status is JSON") or diag $r->{body};
    return $st || {};
}

$t->run(conf());
served('start');

# reloads with header=: the mask pattern is the new cycle's each time

for my $n (1 .. 5) {
    ok($t->reload, "reload $n");
    served("after reload $n");
}

status_ok('after 5 reloads');

# a configuration without credentials (no zone), then without any
# cloudauth directive, then back

ok($t->reload(conf(creds => 0)), 'reload without credentials');
my $r = $t->http_get('/api/x');
is($r->{status}, 200, 'without credentials: proxied');
is(auth($r), 'none', 'without credentials: no token');
my $st = status_ok('without credentials');
is_deeply($st->{credentials}, {}, 'without credentials: none listed');

ok($t->reload(conf(creds => 0, cloudauth => 0)),
   'reload without any cloudauth directive');
$r = $t->http_get('/api/x');
is($r->{status}, 200, 'without cloudauth: proxied');
is(auth($r), 'none', 'without cloudauth: no token');

ok($t->reload(conf()), 'reload back to the credentials');
served('back');
$st = status_ok('back');
ok(@{ $st->{credentials}{google}{entries} || [] }, 'back: the entry listed');

# the zone resized: a new, empty zone

ok($t->reload(conf(zone => '2m')), 'reload, zone 1m -> 2m');
served('zone 2m');
status_ok('zone 2m');

# a reload that resizes the zone and then fails: the port of its new
# "listen" is held by this test, so nginx keeps the old cycle

my $busy = $t->port('busy');
$t->write_conf(conf(zone => '1m', busy => 1));

my @old = $t->worker_pids;
my $mark = length $t->error_log;
kill 'HUP', $t->master_pid;

ok($t->wait_for(sub { substr($t->error_log, $mark)
                      =~ /\[emerg\].*still could not bind\(\)/ }, 20),
   'failed reload: the new listen cannot bind');
is_deeply([$t->worker_pids], \@old, 'failed reload: the old workers stay');
served('failed reload, old workers');

# workers started later by the master, from the old cycle

kill 'KILL', @old;

ok($t->wait_for(sub {
    my @w = $t->worker_pids;
    @w == 2 && !grep { my $p = $_; grep { $_ == $p } @old } @w;
}, 10), 'the master started new workers');

served('failed reload, new workers', 6);
status_ok('failed reload, new workers');

# and a good configuration after all that

$t->release_port('busy');
ok($t->reload(conf(zone => '1m')), 'reload, zone back to 1m');
served('zone 1m');

is(join(' ', $t->leaks), '', 'no token in the logs');
$t->token_verified_ok;

# expected: the failed reload's bind errors, the killed workers' exits

$t->stop;

my %killed = map { $_ => 1 } @old;
my @bad = grep {
    !/\[emerg\].*bind\(\) to 127\.0\.0\.1:$busy failed \(98: /
    && !/\[emerg\].*still could not bind\(\)/
    && !(/\[alert\].*worker process (\d+) exited on signal 9/ && $killed{$1})
} $t->check_log;
is(join("\n", @bad), '', 'no alert, crit or emerg but the expected ones');

done_testing;
