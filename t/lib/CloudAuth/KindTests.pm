package CloudAuth::KindTests;

# The engine tests every credential kind gets (t/1*.t), parameterised by
#
#   path     a location using the credential ("/zoom/"); "x" is appended
#   count    sub: how many token requests (or signings) so far
#   tokens   sub: the tokens issued so far, oldest first
#   set      sub(%behaviour): how the token service answers from now on
#            (delay, expires_in, status, error...); undef for local signing
#
#   single_flight($t, %k)   a cold burst of 40 makes one token request
#   refresh_ahead($t, %k, life => S)
#                           path's token lives S s (4 by default): in its
#                           last S/2 s the next request goes on with it and
#                           a refresh runs in the background
#   invalidate($t, %k)      an upstream 401 drops the token, one new request
#   fails($t, %k, behaviour => {...}, log => qr//)
#                           502, the provider's words logged, then back-off
#   no_leaks($t, $mark, @pages)
#                           no secret in error.log after $mark, access.log,
#                           stderr.log or the pages

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

sub auth { $_[0]{headers}{'x-echo-authorization'} // 'none' }

sub url { my ($k, $q) = @_; return "$k->{path}x" . ($q // '') }

sub single_flight {
    my ($t, %k) = @_;
    my $name = $k{name} // $k{path};

    $k{set}->(delay => 0.5) if $k{set};
    my $n = $k{count}->();

    my @r = $t->burst(url(\%k), 40);

    is(scalar(grep { $_->{status} == 200 } @r), 40,
       "$name: burst: all 40 answered 200")
        or diag explain [ map { "$_->{status} $_->{body}" }
                          grep { $_->{status} != 200 } @r ];
    is($k{count}->() - $n, 1, "$name: burst: exactly one token request");

    my $token = ($k{tokens}->())[-1] // '';
    my %auth = map { auth($_) => 1 } @r;
    is_deeply([keys %auth], ["Bearer $token"],
              "$name: burst: all got the same token");

    $k{set}->() if $k{set};
    return $token;
}

sub refresh_ahead {
    my ($t, %k) = @_;
    my $name = $k{name} // $k{path};
    my $life = $k{life} // 4;
    my $fast = 0.5 * $t->tf;

    $k{set}->(expires_in => $life) if $k{set};
    my $n = $k{count}->();

    my $r = $t->http_get(url(\%k));
    my $t0 = time;
    my $old = ($k{tokens}->())[-1] // '';
    is(auth($r), "Bearer $old", "$name: first token");

    # the refresh window opens at half the life

    my $wait = $t0 + $life / 2 + 0.3 - time;
    sleep $wait if $wait > 0;
    $k{set}->(expires_in => $life, delay => 0.5) if $k{set};

    $r = $t->http_get(url(\%k));
    is(auth($r), "Bearer $old", "$name: in the window: old token");
    cmp_ok($r->{latency}, '<', $fast, "$name: in the window: no wait");
    ok($t->wait_for(sub { $k{count}->() == $n + 2 }, 1),
       "$name: refresh requested");

    my @lat;
    $t->wait_for(sub {
        $r = $t->http_get(url(\%k));
        push @lat, $r->{latency};
        return auth($r) ne "Bearer $old";
    }, 2);

    my $new = ($k{tokens}->())[-1] // '';
    isnt($new, $old, "$name: a new token was issued");
    is(auth($r), "Bearer $new", "$name: the new token is served");
    cmp_ok(time - $t0, '<', $life * 0.9, "$name: before the old one expired");
    cmp_ok((sort { $b <=> $a } @lat)[0] // 0, '<', $fast,
           "$name: no request waited");
    is($k{count}->() - $n, 2, "$name: one refresh only");

    $k{set}->() if $k{set};
}

sub invalidate {
    my ($t, %k) = @_;
    my $name = $k{name} // $k{path};

    my $r = $t->http_get(url(\%k));
    my $n = $k{count}->();
    (my $first = auth($r)) =~ s/^Bearer //;

    # a token signed here is new only in a later second
    sleep $k{gap} if $k{gap};

    $t->revoke($first);
    $r = $t->http_get(url(\%k));
    is($r->{status}, 401, "$name: revoked token: 401 passed on");
    is(auth($r), "Bearer $first", "$name: it carried the revoked token");

    $r = $t->http_get(url(\%k));
    is($r->{status}, 200, "$name: after the 401: 200");
    isnt(auth($r), "Bearer $first", "$name: a new token");
    is($k{count}->() - $n, 1, "$name: exactly one token request");

    my $second = auth($r);
    $r = $t->http_get(url(\%k));
    is(auth($r), $second, "$name: the new token is cached");
    is($k{count}->() - $n, 1, "$name: no further token request");
}

# fails(..., behaviour => {...}, log => qr/provider's words/, requests => N)
sub fails {
    my ($t, %k) = @_;
    my $name = $k{name} // $k{path};
    my $fast = 0.5 * $t->tf;

    $k{set}->(%{ $k{behaviour} }) if $k{set} && $k{behaviour};

    my $mark = length $t->error_log;
    my $n = $k{count}->();

    my $r = $t->http_get(url(\%k));
    is($r->{status}, 502, "$name: 502");
    ok(length $r->{body} && length $r->{body} < 1024, "$name: short answer")
        or diag $r->{body};
    is($k{count}->() - $n, $k{requests} // 1, "$name: token requests");

    my $cred = $k{cred};
    my @l;
    ok($t->wait_for(sub {
        @l = grep { /\[error\]/ && /"\Q$cred\E"/ }
             split /\n/, substr $t->error_log, $mark;
        grep { $_ =~ $k{log} } @l;
    }, 1), "$name: logged with the provider's words") or diag explain \@l;

    # back-off: at once, without a token request

    $n = $k{count}->();
    $r = $t->http_get(url(\%k));
    is($r->{status}, 502, "$name: backing off: 502");
    cmp_ok($r->{latency}, '<', $fast, "$name: backing off: at once");
    is($k{count}->() - $n, 0, "$name: backing off: no token request");

    # one line per refused request, with the request (both of them)
    my $path = quotemeta url(\%k);
    my @refused = grep { /\[error\].*credential "\Q$cred\E": .*answered 502, client: 127\.0\.0\.1, .*request: "GET $path HTTP/ }
                  split /\n/, substr $t->error_log, $mark;
    is(scalar @refused, 2, "$name: each refusal logged with its request")
        or diag explain \@refused;

    $k{set}->() if $k{set};

    return @l;
}

sub no_leaks {
    my ($t, $mark, @pages) = @_;

    $t->stop;

    my @texts = (substr($t->error_log, $mark), $t->access_log,
                 $t->read_file('stderr.log'), @pages);
    my @leaks = $t->leaks_in(@texts);

    cmp_ok(scalar $t->secrets, '>=', 2, 'secrets to look for: '
           . scalar $t->secrets);
    like(substr($t->error_log, $mark), qr/\[debug\]/, 'debug lines checked');
    is(scalar @leaks, 0, 'no secret in logs or pages');

    for my $s (@leaks) {
        diag "leaked: " . substr($s, 0, 12) . '...';
        diag substr($_, 0, 200) for grep { index($_, $s) >= 0 }
                                    split /\n/, join "\n", @texts;
    }
}

1;
