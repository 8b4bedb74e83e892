package CloudAuth::Upload;

# Helpers of the upload tests: a configuration around the fake GCS, a
# streaming HTTP/1.1 client that makes its body on the fly (known length or
# chunked, optionally aborting mid-way) and tells what it sent (size,
# CRC32C, MD5), the workers' memory, and checks of what GCS stored.
#
#   my $t = CloudAuth::Test->new;
#   my $gcs = CloudAuth::Upload::start_gcs($t);   # FakeGCS on port "gcs"
#   my ($r, $sent) = CloudAuth::Upload::upload($t, '/upload/x', size => N,
#                                            chunked => 1);
#   CloudAuth::Upload::stored_ok($t, 'bucket', 'x', $sent, 'name');

use strict;
use warnings;

use Digest::CRC ();
use Digest::MD5 ();
use IO::Select;
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);
use Test::More ();
use Time::HiRes qw(time sleep);

use CloudAuth::FakeGCS;

# the body pattern: a random block whose length is not a multiple of any
# power of two, so bytes resumed at a wrong offset never look right
my $BLOCK;

sub block {
    return $BLOCK if defined $BLOCK;
    open my $fh, '<:raw', '/dev/urandom' or die "urandom: $!";
    read $fh, $BLOCK, 1048576 + 7;
    $BLOCK .= $BLOCK;
    return $BLOCK;
}

# bytes [off, off + len) of the pattern, len <= 1 MiB
sub bytes_at {
    my ($off, $len) = @_;
    my $b = block();
    return substr $b, $off % (1048576 + 7), $len;
}

# the first N bytes of the pattern
sub pattern {
    my ($n) = @_;
    my $d = '';
    while (length $d < $n) {
        my $k = $n - length $d;
        $d .= bytes_at(length $d, $k > 1048576 ? 1048576 : $k);
    }
    return $d;
}

# CRC32C, continued from PREV (a finished CRC) when given
sub crc32c {
    my ($data, $prev) = @_;
    return Digest::CRC::crc($data, 32, $prev // 0xffffffff, 0xffffffff, 1,
                            0x1EDC6F41, 1, defined $prev ? 1 : 0);
}

sub crc32c_b64 { encode_base64(pack('N', $_[0]), '') }

sub start_gcs {
    my ($t) = @_;
    return CloudAuth::FakeGCS->start($t);
}

# send($t, PATH, size => N, chunked => 0|1, method => 'PUT',
#      headers => {...}, data => BYTES (instead of the pattern),
#      abort_after => BYTES, piece => BYTES, timeout => SECONDS,
#      during => sub { ... } called now and then while sending)
# Returns (response, {size, crc32c (number), md5 (base64), sent});
# the response as CloudAuth::Test::parse_response makes it, with error.
sub upload {
    my ($t, $path, %o) = @_;

    my $size = defined $o{data} ? length $o{data} : $o{size} // 0;
    my $piece = $o{piece} // 65536;
    my %h = (Host => 'localhost', %{ $o{headers} || {} });

    if ($o{chunked}) {
        $h{'Transfer-Encoding'} = 'chunked';
    } else {
        $h{'Content-Length'} //= $size;
    }

    my $head = ($o{method} // 'PUT') . " $path HTTP/1.1\r\n";
    $head .= "Connection: close\r\n";
    for my $k (sort keys %h) {
        $head .= "$k: $_\r\n" for ref $h{$k} ? @{ $h{$k} } : $h{$k};
    }
    $head .= "\r\n";

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $o{port} // $t->port('nginx'))
        or return ({ status => 0, error => "connect: $!" }, {});
    $s->blocking(0);

    my $sel = IO::Select->new($s);
    my $end = time + ($o{timeout} // 60) * CloudAuth::Test::tf();
    my ($off, $crc, $md5, $in, $out) = (0, undef, Digest::MD5->new, '', $head);
    my $eof = 0;
    my $done_body = 0;
    my $last_during = 0;
    my $closed_write = 0;

    while (time < $end) {

        # refill what goes out
        if ($out eq '' && !$done_body) {
            my $abort = $o{abort_after};

            if (defined $abort && $off >= $abort) {
                last;
            }

            if ($off < $size) {
                my $n = $size - $off;
                $n = $piece if $n > $piece;
                $n = $abort - $off if defined $abort && $off + $n > $abort;
                my $d = defined $o{data} ? substr($o{data}, $off, $n)
                                         : bytes_at($off, $n);
                $crc = crc32c($d, $crc);
                $md5->add($d);
                $off += $n;
                $out = $o{chunked} ? sprintf("%x\r\n", $n) . $d . "\r\n"
                                   : $d;
            } else {
                $done_body = 1;
                $out = "0\r\n\r\n" if $o{chunked};
            }
        }

        if ($o{during} && time - $last_during > 0.1) {
            $last_during = time;
            $o{during}->($off);
        }

        my ($r, $w) = IO::Select->select($sel, $out ne '' ? $sel : undef,
                                         undef, 0.1);

        if ($r && @$r) {
            my $n = sysread $s, my $buf, 65536;
            if ($n) {
                $in .= $buf;
            } elsif (defined $n || !$!{EAGAIN}) {
                $eof = 1;
                last;
            }
        }

        if ($w && @$w && $out ne '') {
            my $n = syswrite $s, $out;
            if (defined $n) {
                substr $out, 0, $n, '';
            } elsif (!$!{EAGAIN}) {
                # the server closed: read what it said
                $closed_write = 1;
                $out = '';
                $done_body = 1;
            }
        }

        # answered before the body was all sent (413, 400): stop sending
        if ($in =~ /\r\n\r\n/ && !$done_body && $in =~ m{^HTTP/1\.1 [45]}) {
            $out = '';
            $done_body = 1;
        }

        last if $done_body && $out eq '' && response_complete($in);
    }

    my $sent = { size => $off, crc32c => $crc // 0,
                 md5 => encode_base64($md5->digest, ''), };

    if (defined $o{abort_after}) {
        $o{before_close}->() if $o{before_close};
        close $s;
        return ({ status => 0, aborted => 1, body => '' }, $sent);
    }

    # the rest of the answer
    while (!$eof && !response_complete($in) && time < $end) {
        $sel->can_read($end - time) or last;
        my $n = sysread $s, my $buf, 65536;
        last if !$n && !(defined $n ? 0 : $!{EAGAIN});
        $in .= $buf if $n;
    }

    close $s;

    my $res = CloudAuth::Test::parse_response($in);
    $res->{error} = 'timed out' if time >= $end && !$res->{status};
    $res->{json} = eval { JSON::PP->new->decode($res->{body}) };
    return ($res, $sent);
}

sub response_complete {
    my ($in) = @_;
    my ($head, $body) = split /\r\n\r\n/, $in, 2;
    return 0 unless defined $body;
    # past interim responses (1xx) to the final one
    while ($head =~ m{^HTTP/\d\.\d 1\d\d}) {
        ($head, $body) = split /\r\n\r\n/, $body, 2;
        return 0 unless defined $body;
    }
    my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi or return 0;
    return length($body) >= $len;
}

# put($t, PATH, BYTES, %o): a whole body in one go
sub put {
    my ($t, $path, $data, %o) = @_;
    return CloudAuth::Upload::upload($t, $path, data => $data, %o);
}

# the object as the fake stored it, compared with what was sent
sub stored_ok {
    my ($t, $bucket, $name, $sent, $what) = @_;

    my $o = CloudAuth::FakeGCS->object($t, $bucket, $name);

    if (!$o) {
        Test::More::fail("$what: stored");
        return;
    }

    my $data = $o->{data};
    my $ok = length($data) == $sent->{size}
             && crc32c($data) == $sent->{crc32c}
             && Digest::MD5::md5_base64($data) . '==' eq $sent->{md5}
             && $o->{meta}{crc32c} eq crc32c_b64($sent->{crc32c})
             && $o->{meta}{size} == $sent->{size};

    Test::More::ok($ok, "$what: stored bytes and CRC32C are the sent ones")
        or Test::More::diag("stored " . length($data) . " bytes, crc32c "
                            . crc32c_b64(crc32c($data)) . "; sent "
                            . "$sent->{size}, "
                            . crc32c_b64($sent->{crc32c}));
    return $o;
}

# what was sent, for a body given whole
sub sent_of {
    my ($data) = @_;
    return { size => length $data, crc32c => crc32c($data),
             md5 => encode_base64(Digest::MD5::md5($data), '') };
}

# VmRSS of a process, in bytes
sub rss {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (my $l = <$fh>) {
        return $1 * 1024 if $l =~ /^VmRSS:\s+(\d+)\s+kB/;
    }
    return 0;
}

1;
