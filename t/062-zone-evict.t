#!/usr/bin/perl

# A full zone makes room by evicting least recently used entries until
# what is asked for fits, however many that takes: a large token (8000
# bytes, two whole slab pages) in a small zone filled with many subjects'
# small entries is still stored and injected.  Entries a worker is
# fetching for are never evicted; what cannot fit at all fails that one
# entry only (502, logged), the others go on.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use CloudAuth::Test;

my $t = CloudAuth::Test->new;

$t->run(<<'EOF');
    cloudauth_zone 64k;
    cloudauth_trusted_certificate %%CA%%;
    cloudauth_timeout 10s;

    cloudauth_credential people type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%% "subjects=[a-z0-9.@-]+";
    cloudauth_credential big type=google_service_account
        key_file=%%KEY_FILE%% scopes=%%SCOPES%%;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /people/ {
            cloudauth people;
            cloudauth_subject $http_x_user;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location /big/ {
            cloudauth big;
            proxy_buffer_size 32k;
            proxy_buffers 4 32k;
            proxy_busy_buffers_size 32k;
            proxy_pass http://127.0.0.1:%%UPSTREAM_PORT%%;
        }

        location = /status {
            cloudauth_status;
        }
    }
EOF

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

sub entries {
    my $r = $t->http_get('/status');
    my $st = eval { decode_json($r->{body}) } || {};
    return map { $_->{subject} }
           @{ $st->{credentials}{people}{entries} || [] };
}

# fill the zone with small entries, far more subjects than it holds

my $n = 150;
my @bad;

for my $i (1 .. $n) {
    my $r = $t->http_get('/people/x', 'X-User' => "user$i\@example.com");
    push @bad, "user$i: $r->{status}"
        unless $r->{status} == 200 && auth($r) =~ /^Bearer ya29\.fake-/;
}

is(join(', ', @bad), '', "$n subjects served while the zone filled");

my @held = entries();
note scalar(@held) . " entries held of $n";
cmp_ok(scalar @held, '<', $n, 'the zone is full: entries were evicted')
    or diag scalar @held;
cmp_ok(scalar @held, '>', 10, 'and it holds many');
ok((grep { $_ eq "user$n\@example.com" } @held), 'the newest is held');
ok(!(grep { $_ eq 'user1@example.com' } @held), 'the oldest went');

# a large token for another credential

my $big = 'ya29.big-' . join('', map { ('a' .. 'z')[rand 26] } 1 .. 7991);
$t->add_secrets($big);
$t->token_set(body => encode_json({ access_token => $big,
                                    expires_in => 3600,
                                    token_type => 'Bearer' }));

my $r = $t->http_get('/big/x');
is($r->{status}, 200, 'large token: 200');
is(auth($r), "Bearer $big", 'large token: injected whole');

$r = $t->http_get('/big/y');
is(auth($r), "Bearer $big", 'large token: then from the cache');

# and small entries again, beside it

$t->token_set;
$r = $t->http_get('/people/x', 'X-User' => 'after@example.com');
is($r->{status}, 200, 'a small entry after the large one');
like(auth($r), qr/^Bearer ya29\.fake-/, 'its token injected');
$r = $t->http_get('/big/z');
is(auth($r), "Bearer $big", 'the large token is still held');

is(scalar(() = $t->error_log =~ /cloudauth_zone is full/g), 0,
   'the zone never said full');
is(join(' ', $t->leaks), '', 'no token in the logs');

$t->check_log_ok;

done_testing;
