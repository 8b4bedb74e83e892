package CloudAuth::CutProxy;

# A TCP relay in front of nginx that drops connections mid-request, for the
# resumable-upload tests: a client's connection is cut (both sides closed,
# what is in flight lost) once it has carried a given number of bytes
# towards the server, as a network that goes away does.
#
#   my $port = CloudAuth::CutProxy->start($t, name => 'cut',
#       to => $t->port('nginx'), cuts => [5 << 20, 11 << 20, 3 << 20],
#       outage => 0);
#   ... clients talk to 127.0.0.1:$port ...
#   my @c = CloudAuth::CutProxy->connections($t, 'cut');
#
# cuts: thresholds used in turn: the first connection to carry cuts[0]
# bytes towards the server (request line, headers and body, counted from
# the connection's start) is cut there, at about that byte; then the
# first to carry cuts[1], and so on; once they are used up everything
# passes.  set_cuts() gives a new list while it runs (read by every new
# connection and every 64 KiB).  One process, select(): the order of
# connections and cuts is what the bytes did, never a race between
# processes.  outage => SECS: a cut takes the whole network down: every
# other open connection is reset too, and connections made in the next
# SECS seconds are reset as soon as they are accepted (a browser sends a
# request again by itself on another connection when the one it had reused
# breaks; in an outage that fails too, and the page sees the error).
# Every connection, when it ends, is a JSON line in DIR/NAME.log: {n, up,
# down, cut (1: the one that crossed the threshold), dropped (1: reset by
# an outage), start, end}; "up" is what the relay read from the client
# (at a cut, what it had not yet written on is dropped): an upper bound of
# what reached the server.

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Socket ();
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time);

use CloudAuth::FakeGoogle;

# start($t, name => NAME, to => PORT, cuts => [BYTES...]): returns the port
sub start {
    my ($class, $t, %o) = @_;

    my $name = $o{name} // 'cut';
    my $dir = $t->dir;

    $class->set_cuts($t, $name, $o{cuts} || []);
    unlink "$dir/$name.log";

    $t->fork_server($name, sub {
        my ($listen) = @_;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/$name.err";
        open STDERR, '>&', \*STDOUT;
        $SIG{TERM} = sub { POSIX::_exit(0) };
        $SIG{PIPE} = 'IGNORE';
        STDOUT->autoflush(1);

        eval { relay($listen, $o{to}, "$dir/$name", $o{outage} // 0) };
        print STDERR "cut proxy: $@" if $@;
        POSIX::_exit(0);
    });

    return $t->port($name);
}

sub set_cuts {
    my ($class, $t, $name, $cuts) = @_;
    CloudAuth::FakeGoogle::write_json($t->dir . "/$name.cuts",
        { cuts => $cuts, stamp => time . " $$ " . ++$t->{cut_stamps} });
}

# the connections that ended, in the order they ended
sub connections {
    my ($class, $t, $name) = @_;
    return CloudAuth::FakeGoogle::read_json_lines($t->dir . '/'
                                                  . ($name // 'cut') . '.log');
}

# the server's side ---------------------------------------------------------

# each direction: bytes read from one socket wait in {out}{SOCK} until the
# other takes them; a socket is read only when what it gave went on, so a
# server that reads slowly slows its client down (and nothing else)
sub relay {
    my ($listen, $to, $base, $outage) = @_;

    my $rd = IO::Select->new($listen);
    my $wr = IO::Select->new;
    my %conn;
    my $n = 0;
    my ($cuts, $stamp) = read_cuts($base);
    my $used = 0;
    my $since = 0;
    my $down_until = 0;

    $listen->blocking(0);

    my $reread = sub {
        my ($c, $s) = read_cuts($base);
        if ($s ne $stamp) {
            ($cuts, $stamp, $used) = ($c, $s, 0);
        }
    };

    while (1) {
        my ($r, $w) = IO::Select->select($rd, $wr, undef, 1);

        for my $s (@{ $w || [] }) {
            my $k = $conn{"$s"} or next;
            my $d = $s == $k->{u} ? 'to_u' : 'to_c';
            my $n = syswrite $s, $k->{$d};

            if (!defined $n) {
                next if $!{EAGAIN} || $!{EINTR};
                finish($base, $rd, $wr, \%conn, $k);
                next;
            }

            substr $k->{$d}, 0, $n, '';
            next if length $k->{$d};

            $wr->remove($s);
            my $src = $s == $k->{u} ? $k->{c} : $k->{u};

            # the source ended and all it said is through: done
            if ($k->{eof}{"$src"}) {
                finish($base, $rd, $wr, \%conn, $k);
                next;
            }

            $rd->add($src);
        }

        for my $s (@{ $r || [] }) {

            if ($s == $listen) {
                my $c = $listen->accept or next;

                if (time < $down_until) {
                    setsockopt($c, Socket::SOL_SOCKET(), Socket::SO_LINGER(),
                               pack('ii', 1, 0));
                    close $c;
                    CloudAuth::FakeGoogle::append_json("$base.log", {
                        n => ++$n, up => 0, down => 0, cut => 0,
                        dropped => 1, start => time, end => time });
                    next;
                }

                my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                              PeerPort => $to);
                if (!$u) {
                    close $c;
                    next;
                }

                $reread->();
                $c->blocking(0);
                $u->blocking(0);
                my $k = { n => ++$n, up => 0, down => 0, cut => 0,
                          start => time, c => $c, u => $u,
                          to_u => '', to_c => '', eof => {} };
                $conn{"$c"} = $conn{"$u"} = $k;
                $rd->add($c, $u);
                next;
            }

            my $k = $conn{"$s"} or next;
            my $up = $s == $k->{c};
            my $dst = $up ? $k->{u} : $k->{c};
            my $d = $up ? 'to_u' : 'to_c';
            my $got = sysread $s, my $buf, 65536;

            if (!defined $got) {
                next if $!{EAGAIN} || $!{EINTR};
                finish($base, $rd, $wr, \%conn, $k);
                next;
            }

            if ($got == 0) {
                $rd->remove($s);
                $k->{eof}{"$s"} = 1;
                finish($base, $rd, $wr, \%conn, $k)
                    unless length $k->{$d};
                next;
            }

            if ($up) {
                my $limit = $cuts->[$used];

                if (defined $limit && $k->{up} + $got >= $limit) {
                    # what is below the threshold goes, then the cut
                    my $part = $limit - $k->{up};
                    if ($part > 0) {
                        $k->{to_u} .= substr $buf, 0, $part;
                        $k->{up} += $part;
                        syswrite $k->{u}, $k->{to_u};
                    }
                    $k->{cut} = 1;
                    $used++;
                    finish($base, $rd, $wr, \%conn, $k);

                    if ($outage) {
                        $down_until = time + $outage;
                        for my $o (values %conn) {
                            $o->{dropped} = 1;
                            finish($base, $rd, $wr, \%conn, $o);
                        }
                    }
                    next;
                }

                $k->{up} += $got;
                $since += $got;

                if ($since >= 65536) {
                    $since = 0;
                    $reread->();
                }

            } else {
                $k->{down} += $got;
            }

            $k->{$d} .= $buf;
            $rd->remove($s);
            $wr->add($dst);
        }
    }
}

sub finish {
    my ($base, $rd, $wr, $conn, $k) = @_;

    return if $k->{done}++;

    for my $s ($k->{c}, $k->{u}) {
        $rd->remove($s);
        $wr->remove($s);
        delete $conn->{"$s"};
        # a reset, not an orderly end, when cut
        setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_LINGER(),
                   pack('ii', 1, 0)) if $k->{cut} || $k->{dropped};
        close $s;
    }

    CloudAuth::FakeGoogle::append_json("$base.log", {
        n => $k->{n}, up => $k->{up}, down => $k->{down}, cut => $k->{cut},
        dropped => $k->{dropped} // 0, start => $k->{start}, end => time });
}

# (cuts, a stamp that changes with the list)
sub read_cuts {
    my ($base) = @_;
    my $c = CloudAuth::FakeGoogle::read_json("$base.cuts") || {};
    return ($c->{cuts} || [], $c->{stamp} // '');
}

1;
