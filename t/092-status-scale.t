#!/usr/bin/perl

# cloudauth_status with 10,000 cached subjects: each credential lists its
# 100 most recently used entries by default, most recently used first,
# with entries_total and sums over all of them; ?limit=N lists more or
# fewer (0 to 1000), ?credential=NAME one credential; bad values get 400
# or 404 with the reason; the zone's size and use.  The page answers
# quickly with 10,000 entries (a generous bound here; bench/ measures it).
#
# The 10,000 entries are made fast: subjects of a credential whose token
# endpoint refuses connections, asked for by pipelined requests on a few
# keep-alive connections; each entry stays, in back-off.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);
use CloudAuth::Test;

my $N = 10000;

my $t = CloudAuth::Test->new;

# a port nothing listens on: every fetch of "many" fails at once
$t->release_port('dead');

$t->run(<<'EOF');
    cloudauth_zone 16m;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;
    keepalive_requests 100000;

    cloudauth_credential many type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%
        "subjects=u\d+@example\.com"
        token_url=http://127.0.0.1:%%PORT_DEAD%%/token;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=.+";

    server {
        listen 127.0.0.1:%%PORT%%;

        location /many/ {
            cloudauth many;
            cloudauth_subject $http_x_user;
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

sub subject { sprintf 'u%05d@example.com', $_[0] }

# GET /many/ for each subject, pipelined on $conns keep-alive connections;
# returns the number of answers
sub flood {
    my ($conns, @subjects) = @_;

    my (%c, $answers);
    my $sel = IO::Select->new;

    for my $i (0 .. $conns - 1) {
        my @mine = @subjects[grep { $_ % $conns == $i } 0 .. $#subjects];
        next unless @mine;

        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $t->port('nginx'))
            or die "connect: $!";
        $s->blocking(0);

        my $out = '';
        for my $k (0 .. $#mine) {
            $out .= "GET /many/ HTTP/1.1\r\nHost: localhost\r\n"
                  . "X-User: $mine[$k]\r\n"
                  . ($k == $#mine ? "Connection: close\r\n" : '') . "\r\n";
        }

        $c{"$s"} = { sock => $s, out => $out, in => '' };
        $sel->add($s);
    }

    my $end = time + 60 * $t->tf;

    while ($sel->count && time < $end) {
        my @w = grep { length $c{"$_"}{out} } $sel->handles;
        my ($r, $w) = IO::Select->select($sel, IO::Select->new(@w), undef,
                                         $end - time);

        for my $s (@{ $w || [] }) {
            my $n = syswrite $s, $c{"$s"}{out}, 65536;
            substr $c{"$s"}{out}, 0, $n, '' if $n;
        }

        for my $s (@{ $r || [] }) {
            my $n = sysread $s, my $buf, 65536;
            next if !defined $n && $!{EAGAIN};

            if ($n) {
                $c{"$s"}{in} .= $buf;
                next;
            }

            $sel->remove($s);
            close $s;
        }
    }

    $answers += () = $_->{in} =~ m{^HTTP/1\.1 \d{3} }mg for values %c;

    return $answers;
}

# GET, decoded; the time it took in {took}
sub status {
    my ($path) = @_;
    my $start = time;
    my $r = $t->http_get($path);
    my $took = time - $start;
    my $st = $r->{status} == 200 ? eval { decode_json($r->{body}) } : undef;
    return { %{ $st || {} }, took => $took, http => $r };
}

sub subjects {
    my ($st, $cred) = @_;
    return map { $_->{subject} }
           @{ $st->{credentials}{$cred}{entries} || [] };
}

# 10,000 subjects into the cache

my $start = time;
my $answers = flood(8, map { subject($_) } 1 .. $N);
note sprintf 'made %d entries in %.2f s', $N, time - $start;
is($answers, $N, "$N subjects asked for");

ok($t->wait_for(sub { (status('/status?limit=0')->{credentials}{many}
                           {entries_total} // 0) == $N }, 10),
   "$N entries in the zone");

# two of the other credential, with tokens: a, b, then a again, more than
# a second later (the order is kept to the second: an entry used again
# within a second is not moved, which spares a hit two cache misses)

for my $s (qw(a b a)) {
    Time::HiRes::sleep(1.1) if $s eq 'a' && $t->{people_a}++;
    my $r = $t->http_get('/people/x', 'X-User' => "$s\@example.com");
    is($r->{status}, 200, "people: $s");
}

# the default page: 100 per credential, the totals, the sums

my $st = status('/status');
is($st->{http}{status}, 200, 'status answers 200');
my $many = $st->{credentials}{many} || {};
is($many->{entries_total}, $N, 'entries_total counts every entry');
is(scalar @{ $many->{entries} || [] }, 100, '100 entries listed by default');
is($many->{fetch_failures}, $N, 'sums over all entries, not only those '
                                . 'listed');
is($many->{misses}, $N, 'misses summed over all entries');
like($many->{entries}[0]{state}, qr/^(backoff|failing)$/,
     'an entry that failed (in back-off, or out of it by now)');
is_deeply([subjects($st, 'people')], ['a@example.com', 'b@example.com'],
          'most recently used first');
is($st->{credentials}{people}{entries_total}, 2, 'people: entries_total');
is($st->{credentials}{people}{hits}, 1, 'people: sums');
is($st->{zone}{size}, 16 * 1024 * 1024, 'zone size');
cmp_ok($st->{zone}{used}, '>', $N * 256, 'zone used');
cmp_ok($st->{zone}{used}, '<', $st->{zone}{size}, 'zone used < size');

# most recently used first: three entries asked for again (back-off: 502,
# but used)

for my $i (7, 3, 5) {
    my $r = $t->http_get('/many/', 'X-User' => subject($i));
    is($r->{status}, 502, 'back-off answers 502');
}

$st = status('/status?credential=many&limit=3');
is_deeply([subjects($st, 'many')], [map { subject($_) } 5, 3, 7],
          '?limit=3: the three most recently used, most recent first');
is_deeply([keys %{ $st->{credentials} }], ['many'],
          '?credential= shows that one');

# the most entries a page lists, and how long it takes

my $max = 1000;
$st = status("/status?credential=many&limit=$max");
my @all = subjects($st, 'many');
is(scalar @all, $max, "?limit=$max lists $max");
my %seen;
is(scalar(grep { !$seen{$_}++ } @all), $max, 'each subject once');
is($all[0], subject(5), 'most recent first');
is($st->{credentials}{many}{entries_total}, $N, 'and counts them all');

# generous bounds (2 s; bench/ has the measurements, milliseconds): a page
# that takes that long holds its worker, or the zone's mutex, far too long
my ($took_default, $took_max) = (status('/status')->{took},
                                 status("/status?limit=$max")->{took});
note sprintf 'status with %d entries: %.1f ms (100 listed), '
           . '%.1f ms (%d listed)', $N, 1000 * $took_default,
             1000 * $took_max, $max;
cmp_ok($took_default, '<', 2 * $t->tf, 'default page in < 2 s');
cmp_ok($took_max, '<', 2 * $t->tf, "$max entries in < 2 s");

$st = status('/status?limit=0&credential=peop%6Ce');
is_deeply($st->{credentials}{people}{entries}, [], '?limit=0: none listed');
is($st->{credentials}{people}{entries_total}, 2,
   '?limit=0: entries_total still');
ok(!exists $st->{credentials}{many}, '?credential= URL-decoded');

# bad values

for my $q ('limit=-1', 'limit=abc', 'limit=', "limit=" . ($max + 1),
           'limit=99999999999999999999999', 'limit=1e3', 'limit=%31')
{
    my $r = $t->http_get("/status?$q");
    is($r->{status}, 400, "?$q: 400");
    like($r->{body}, qr/"limit" must be a whole number from 0 to $max/,
         "?$q: the reason");
}

my $r = $t->http_get('/status?credential=nope');
is($r->{status}, 404, 'unknown credential: 404');
like($r->{body}, qr/"credential" names no cloudauth_credential/,
     'unknown credential: the reason');

# Prometheus: the totals, one credential, the zone

$r = $t->http_get('/status?format=prometheus');
like($r->{body}, qr/^cloudauth_cache_entries\{credential="many"\} $N$/m,
     'prometheus: entries');
like($r->{body}, qr/^cloudauth_zone_size_bytes 16777216$/m,
     'prometheus: zone size');
like($r->{body}, qr/^cloudauth_zone_used_bytes \d+$/m,
     'prometheus: zone used');

$r = $t->http_get('/status?format=prometheus&credential=people');
like($r->{body}, qr/^cloudauth_cache_entries\{credential="people"\} 2$/m,
     'prometheus ?credential=: that one');
unlike($r->{body}, qr/credential="many"/, 'prometheus ?credential=: only');

$t->check_log_ok;

done_testing;
