package CloudAuth::FakeGoogle;

# Fake servers for the cloudauth tests, each a forking server (one child per
# connection, several requests per connection) run in its own process group:
#
#   token     Google's OAuth2 token endpoint over TLS.  Verifies the
#             jwt-bearer grant strictly (form, RS256 signature with the
#             public key, header, every claim) and answers 400 invalid_grant
#             with the reason when something is wrong.  An assertion with
#             target_audience instead of scope (an ID token grant) gets
#             {"id_token": JWT}, its exp now + expires_in.
#   upstream  plain HTTP echo: tells what Authorization it got; 401 when the
#             path contains "/401" or the token is listed in revoked.txt;
#             404 when it contains "/404"; ?accel=PATH answers with
#             X-Accel-Redirect: PATH.
#
# State is shared with the test through files in the test directory, read at
# every request:
#
#   fake_token.json   behaviour: {status, error, error_description, body,
#                     delay, expires_in, retry_after, date_offset, drop,
#                     expect_scope, expect_scopes: [one of these]}
#   fake_keys.json    {kid: {client_email, public_key}} known to the endpoint
#   fake_token.log    one JSON line per token request
#   fake_token.inflight
#                     "NOW MAX": token requests in flight now, and at most
#                     so far (from the request read to just before the
#                     answer is written: within the client's own span)
#   upstream.log      one JSON line per upstream request
#   revoked.txt       tokens the upstream refuses, one a line

use strict;
use warnings;

use Crypt::OpenSSL::RSA;
use Fcntl qw(:flock);
use IO::Socket::SSL;
use JSON::PP;
use MIME::Base64 qw(decode_base64url);
use POSIX ();
use Time::HiRes qw(time sleep);

our @SCOPES = ('https://www.googleapis.com/auth/devstorage.read_write',
               'https://www.googleapis.com/auth/drive');

our $GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

my $json = JSON::PP->new->canonical->allow_nonref;

# serve(name => NAME, listen => SOCKET, dir => DIR, handler => SUB,
#       tls => {cert, key}): the server's loop, in the process
# CloudAuth::Test::fork_server made for it (its own process group, the
# listening socket bound there); does not return

sub serve {
    my ($class, %o) = @_;

    open STDIN, '<', '/dev/null';
    open STDOUT, '>>', "$o{dir}/fake_$o{name}.err";
    open STDERR, '>&', \*STDOUT;
    STDOUT->autoflush(1);

    $SIG{$_} = 'DEFAULT' for qw(INT HUP ALRM);
    $SIG{TERM} = sub { POSIX::_exit(0) };
    $SIG{CHLD} = 'IGNORE';

    my $listen = $o{listen};

    while (1) {
        my $c = $listen->accept or next;

        my $child = fork;
        if (!defined $child || $child) {
            close $c;
            next;
        }

        close $listen;
        eval { connection($c, \%o) };
        print STDERR "$$: $@" if $@;
        POSIX::_exit(0);
    }
}

sub connection {
    my ($c, $o) = @_;

    my %conn = (peer => $c->peerhost . ':' . $c->peerport, n => 0);

    $SIG{ALRM} = sub { POSIX::_exit(0) };
    alarm 30;

    if ($o->{tls}) {
        IO::Socket::SSL->start_SSL($c, SSL_server => 1,
            SSL_cert_file => $o->{tls}{cert}, SSL_key_file => $o->{tls}{key},
            SSL_alpn_protocols => ['http/1.1'])
            or do { print STDERR "TLS handshake: $SSL_ERROR\n"; return };
    }

    while (1) {
        alarm 30;
        my $req = read_request($c) or return;
        $conn{n}++;

        my $res = $o->{handler}->($req, \%conn);
        alarm 0;

        sleep $res->{delay} if $res->{delay};
        $res->{answering}->() if $res->{answering};
        return if $res->{drop};

        my $keep = keepalive($req);
        my $body = $res->{body} // '';
        my %h = (
            'Content-Type' => 'text/plain',
            Date => http_date(time),
            %{ $res->{headers} || {} },
            'Content-Length' => length $body,
            Connection => $keep ? 'keep-alive' : 'close',
        );

        my $out = "HTTP/1.1 $res->{status} " . reason($res->{status}) . "\r\n";
        $out .= "$_: $h{$_}\r\n" for sort keys %h;
        $out .= "\r\n";
        $out .= $body unless $req->{method} eq 'HEAD';

        print $c $out or return;
        return unless $keep;
    }
}

sub keepalive {
    my ($req) = @_;
    my $c = $req->{headers}{connection} // '';
    return 0 if $c =~ /close/i;
    return 1 if $req->{version} eq '1.1';
    return $c =~ /keep-alive/i;
}

sub reason {
    my %r = (200 => 'OK', 400 => 'Bad Request', 401 => 'Unauthorized',
             403 => 'Forbidden', 404 => 'Not Found', 408 => 'Request Timeout',
             429 => 'Too Many Requests', 500 => 'Internal Server Error',
             502 => 'Bad Gateway', 503 => 'Service Unavailable',
             504 => 'Gateway Timeout');
    return $r{ $_[0] } // 'Status';
}

sub http_date {
    return POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime $_[0]);
}

# one request: {method, uri, path, version, headers (lc, joined), raw, body}

sub read_request {
    my ($c) = @_;

    local $/ = "\n";

    my $line = <$c>;
    return unless defined $line;
    $line =~ s/\r?\n$//;
    my ($method, $uri, $version) = $line =~ m{^(\S+) (\S+) HTTP/(\d\.\d)$}
        or return;

    my (%h, @raw);
    while (defined(my $l = <$c>)) {
        $l =~ s/\r?\n$//;
        last if $l eq '';
        my ($k, $v) = $l =~ /^([^:]+):\s*(.*?)\s*$/ or next;
        push @raw, [$k, $v];
        $h{ lc $k } = exists $h{ lc $k } ? "$h{lc $k}, $v" : $v;
    }

    my $body = '';

    # a lying GCS (t/231): a streamed chunk is answered 503 before its
    # body, then a status query claims bytes up to CLOUDAUTH_FAKE_LIE
    if ($ENV{CLOUDAUTH_FAKE_LIE} && $method eq 'PUT') {
        my $cr = $h{'content-range'} // '';
        my $answer = $cr =~ m{^bytes 0-\d+/\*$}
            ? "HTTP/1.1 503 Unavailable\r\n"
            : $cr eq 'bytes */*'
            ? "HTTP/1.1 308 Resume Incomplete\r\n"
              . "Range: bytes=0-$ENV{CLOUDAUTH_FAKE_LIE}\r\n"
            : undef;
        if (defined $answer) {
            print $c $answer, "Content-Length: 0\r\nConnection: close\r\n\r\n";
            close $c;
            POSIX::_exit(0);
        }
    }

    if (($h{expect} // '') =~ /100-continue/i) {
        print $c "HTTP/1.1 100 Continue\r\n\r\n";
    }

    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        while (defined(my $size = <$c>)) {
            $size = hex $size;
            last if $size == 0;
            read_n($c, \$body, $size);
            <$c>;
        }
        while (defined(my $l = <$c>)) { last if $l =~ /^\r?\n$/ }

    } elsif (my $len = $h{'content-length'}) {
        read_n($c, \$body, $len);
    }

    my ($path) = $uri =~ /^([^?]*)/;

    return { method => $method, uri => $uri, path => $path,
             version => $version, headers => \%h, raw => \@raw,
             body => $body };
}

sub read_n {
    my ($c, $buf, $n) = @_;
    while ($n > 0) {
        my $got = read($c, $$buf, $n, length $$buf) or return;
        $n -= $got;
    }
}

# files shared with the test

sub read_json {
    my ($file) = @_;
    open my $fh, '<', $file or return undef;
    local $/;
    return eval { $json->decode(<$fh>) };
}

sub write_json {
    my ($file, $data) = @_;
    open my $fh, '>', "$file.$$" or die "$file: $!";
    print $fh $json->encode($data);
    close $fh;
    rename "$file.$$", $file or die "$file: $!";
}

sub append_json {
    my ($file, $rec) = @_;
    open my $fh, '>>', $file or die "$file: $!";
    flock $fh, LOCK_EX;
    syswrite $fh, $json->encode($rec) . "\n";
    close $fh;
}

sub read_json_lines {
    my ($file) = @_;
    open my $fh, '<', $file or return ();
    flock $fh, LOCK_SH;
    return map { $json->decode($_) } grep { /\S/ } <$fh>;
}

sub serial {
    my ($dir) = @_;
    open my $fh, '+>>', "$dir/fake_token.serial" or die "serial: $!";
    flock $fh, LOCK_EX;
    seek $fh, 0, 0;
    my $n = (<$fh> // 0) + 1;
    truncate $fh, 0;
    print $fh $n;
    close $fh;
    return $n;
}

# in_flight(DIR, +1 or -1): counts a token request in or out; returns the
# number in flight now
sub in_flight {
    my ($dir, $d) = @_;
    open my $fh, '+>>', "$dir/fake_token.inflight" or die "in_flight: $!";
    flock $fh, LOCK_EX;
    seek $fh, 0, 0;
    my ($now, $max) = split ' ', (<$fh> // '0 0');
    $now = ($now // 0) + $d;
    $max = $now if $now > ($max // 0);
    truncate $fh, 0;
    print $fh "$now $max";
    close $fh;
    return $now;
}

sub random_hex {
    my ($bytes) = @_;
    open my $fh, '<:raw', '/dev/urandom' or die "urandom: $!";
    read($fh, my $r, $bytes);
    return unpack 'H*', $r;
}

# the token endpoint ------------------------------------------------------

# token_handler(dir => DIR, url => URL): the handler for start()

sub token_handler {
    my (%o) = @_;

    return sub {
        my ($req, $conn) = @_;

        my $b = read_json("$o{dir}/fake_token.json") || {};
        my %rec = (time => time, pid => $$, peer => $conn->{peer},
                   conn_request => $conn->{n}, method => $req->{method},
                   uri => $req->{uri},
                   content_type => $req->{headers}{'content-type'},
                   user_agent => $req->{headers}{'user-agent'});

        $rec{in_flight} = in_flight($o{dir}, 1);

        my $err = verify_grant($req, \%o, $b, \%rec);
        $rec{verified} = $err ? 0 : 1;
        $rec{reason} = $err if $err;

        my $res = token_answer($err, $b, \%o, \%rec);
        append_json("$o{dir}/fake_token.log", \%rec);

        # counted out before the answer goes: the client may start its next
        # request the moment it has this one
        $res->{answering} = sub { in_flight($o{dir}, -1) };

        return $res;
    };
}

# the jwt-bearer grant as Google checks it; returns the failure or undef

sub verify_grant {
    my ($req, $o, $b, $rec) = @_;

    my ($url_path) = $o->{url} =~ m{^https?://[^/]+(/[^?]*)};

    return 'method is not POST' if $req->{method} ne 'POST';
    return "path is not $url_path" if $req->{path} ne $url_path;
    return 'Content-Type is not application/x-www-form-urlencoded'
        if ($req->{headers}{'content-type'} // '')
           !~ m{^application/x-www-form-urlencoded\s*(;|$)}i;

    my %form;
    for my $pair (split /&/, $req->{body}) {
        my ($k, $v) = map { my $s = $_ // ''; $s =~ tr/+/ /;
                            $s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge; $s }
                      split /=/, $pair, 2;
        return "duplicate form parameter \"$k\"" if exists $form{$k};
        $form{$k} = $v;
    }

    return "grant_type is not $GRANT" if ($form{grant_type} // '') ne $GRANT;
    return 'no assertion' unless length($form{assertion} // '');

    my @extra = grep { !/^(grant_type|assertion)$/ } sort keys %form;
    return "unexpected form parameters: @extra" if @extra;

    my $jwt = $rec->{assertion} = $form{assertion};
    my @part = split /\./, $jwt, -1;

    return 'assertion is not three base64url parts'
        if @part != 3 || grep { !/^[A-Za-z0-9_-]+$/ } @part;

    my $header = eval { $json->decode(decode_base64url($part[0])) };
    return 'assertion header is not JSON' unless ref $header eq 'HASH';
    $rec->{header} = $header;

    return 'alg is not RS256' if ($header->{alg} // '') ne 'RS256';
    return 'typ is not JWT' if ($header->{typ} // '') ne 'JWT';

    my @hx = grep { !/^(alg|typ|kid)$/ } sort keys %$header;
    return "unexpected header fields: @hx" if @hx;

    my $keys = read_json("$o->{dir}/fake_keys.json") || {};
    my $key = $keys->{ $header->{kid} // '' }
        or return 'kid is not the private_key_id of a known key';

    # RS256 is RSASSA-PKCS1-v1_5: said so, since Crypt::OpenSSL::RSA 0.35
    # (Debian 13, sid) verifies with PSS unless told (0.33's verify() took
    # PKCS#1 v1.5 whatever the padding set)
    my $rsa = Crypt::OpenSSL::RSA->new_public_key($key->{public_key});
    $rsa->use_sha256_hash;
    $rsa->use_pkcs1_padding;
    return 'Invalid JWT Signature.'
        unless $rsa->verify("$part[0].$part[1]", decode_base64url($part[2]));

    my $text = decode_base64url($part[1]);
    my $c = eval { $json->decode($text) };
    return 'claims are not a JSON object' unless ref $c eq 'HASH';
    $rec->{claims} = $c;
    $rec->{sub} = $c->{sub};

    my @scopes = $b->{expect_scopes} ? @{ $b->{expect_scopes} }
               : ($b->{expect_scope} // join ' ', @SCOPES);
    my $scope = $scopes[0];
    my $now = time;

    # an ID token grant has target_audience instead of scope
    $rec->{target_audience} = $c->{target_audience};
    my $aud_claim = exists $c->{target_audience} ? 'target_audience'
                  : 'scope';

    for my $n (qw(iat exp)) {
        return "$n is not an integer" unless $text =~ /"$n"\s*:\s*\d+\s*[,}]/;
    }

    return 'iss is not the client_email of the key'
        if ($c->{iss} // '') ne $key->{client_email};
    if ($aud_claim eq 'scope') {
        return "scope is not \"$scope\""
            unless grep { ($c->{scope} // '') eq $_ } @scopes;
    } else {
        return 'target_audience is empty or not a string'
            if ref $c->{target_audience} || !length $c->{target_audience};
        return 'scope and target_audience both given' if exists $c->{scope};
        return 'sub with target_audience' if exists $c->{sub};
    }
    return "aud is not $o->{url}" if ($c->{aud} // '') ne $o->{url};
    return 'iat is more than 60 s off' if abs($c->{iat} - $now) > 60;
    return 'exp is not iat + 3600' if $c->{exp} != $c->{iat} + 3600;
    return 'sub is empty or not a string'
        if exists $c->{sub} && (ref $c->{sub} || !length($c->{sub} // ''));

    my @cx = grep { !/^(iss|$aud_claim|aud|iat|exp|sub)$/ } sort keys %$c;
    return "unexpected claims: @cx" if @cx;

    return undef;
}

# the answer, shaped by the behaviour

sub token_answer {
    my ($err, $b, $o, $rec) = @_;

    my %h = ('Content-Type' => 'application/json; charset=utf-8',
             'Cache-Control' => 'no-cache, no-store, max-age=0',
             Date => http_date(time + ($b->{date_offset} // 0)));
    $h{'Retry-After'} = $b->{retry_after} if defined $b->{retry_after};

    my $res = { headers => \%h, delay => $b->{delay} };

    if ($b->{drop}) {
        $rec->{status} = 'drop';
        return { drop => 1, delay => $b->{delay} };
    }

    if ($err) {
        $res->{status} = $rec->{status} = 400;
        $res->{body} = $json->encode({ error => 'invalid_grant',
                                       error_description => $err });
        return $res;
    }

    my $status = $b->{status} // ($b->{error} ? 400 : 200);

    if ($status != 200 || $b->{error}) {
        $res->{status} = $rec->{status} = $status;
        my $code = $status >= 500 ? 'internal_failure' : 'invalid_request';
        $res->{body} = $b->{body} // $json->encode({
            error => $b->{error} // $code,
            error_description => $b->{error_description}
                                 // "injected failure $status" });
        return $res;
    }

    $res->{status} = $rec->{status} = 200;

    if (defined $b->{body}) {
        $rec->{raw_body} = 1;
        $res->{body} = $b->{body};
        return $res;
    }

    if (defined $rec->{target_audience}) {
        # Google answers an ID token grant with {"id_token": JWT} only
        my $now = int time;
        my $email = $rec->{claims}{iss};
        my $id = id_token(iss => 'https://accounts.google.com',
            aud => $rec->{target_audience}, azp => $email, email => $email,
            email_verified => JSON::PP::true, iat => $now,
            exp => $now + ($b->{expires_in} // 3600),
            sub => '1' . serial($o->{dir}) . random_hex(4));
        $rec->{token} = $id;
        $rec->{expires_in} = $b->{expires_in} // 3600;
        $res->{body} = $json->encode({ id_token => $id });
        return $res;
    }

    my $token = sprintf 'ya29.fake-%d-%s', serial($o->{dir}), random_hex(16);

    $rec->{token} = $token;
    $rec->{expires_in} = $b->{expires_in} // 3600;
    $res->{body} = $json->encode({ access_token => $token,
                                   expires_in => $rec->{expires_in},
                                   token_type => 'Bearer' });
    return $res;
}

# an ID token as Google's look: RS256 header, CLAIMS, a signature (random:
# nobody here verifies it)

sub id_token {
    my (%claims) = @_;
    my $h = { alg => 'RS256', kid => random_hex(20), typ => 'JWT' };
    return join '.', map { MIME::Base64::encode_base64url($_) }
        $json->encode($h), $json->encode(\%claims),
        pack('H*', random_hex(256));
}

# the echo upstream -------------------------------------------------------

# upstream_handler(dir => DIR): 200 (or 401) with X-Echo-Authorization (the
# value, or "none"), X-Echo-Authorization-Count, and a body of the path and
# every request header; "delay=SECONDS" in the query delays the answer,
# "noecho" in the query leaves the values out (upstream.log has them)

sub upstream_handler {
    my (%o) = @_;

    return sub {
        my ($req, $conn) = @_;

        my @auth = map { $_->[1] }
                   grep { lc $_->[0] eq 'authorization' } @{ $req->{raw} };
        my $auth = @auth ? join(', ', @auth) : 'none';

        my %revoked;
        if (open my $fh, '<', "$o{dir}/revoked.txt") {
            %revoked = map { chomp; ($_ => 1) } <$fh>;
        }

        my ($token) = $auth =~ /^Bearer\s+(\S+)$/i;
        my $status = ($req->{path} =~ m{/401} || $revoked{ $token // '' })
                     ? 401 : $req->{path} =~ m{/404} ? 404 : 200;
        my ($accel) = $req->{uri} =~ /[?&]accel=([^&]+)/;
        my ($delay) = $req->{uri} =~ /[?&]delay=([\d.]+)/;
        my $noecho = $req->{uri} =~ /[?&]noecho\b/;

        append_json("$o{dir}/upstream.log", {
            time => time, pid => $$, peer => $conn->{peer},
            conn_request => $conn->{n}, method => $req->{method},
            uri => $req->{uri}, version => $req->{version},
            authorization => \@auth, headers => $req->{raw},
            status => $status });

        $auth = $auth eq 'none' ? 'none' : 'hidden' if $noecho;

        my %h = ('X-Echo-Authorization' => $auth,
                 'X-Echo-Authorization-Count' => scalar @auth,
                 'X-Echo-Path' => $req->{path});
        $h{'WWW-Authenticate'} = 'Bearer error="invalid_token"'
            if $status == 401;
        $h{'X-Accel-Redirect'} = $accel if $accel;

        my $body = "path: $req->{uri}\nauthorization: $auth\n";
        $body .= join '', map { "header: $_->[0]: $_->[1]\n" } @{ $req->{raw} }
            unless $noecho;

        return { status => $status, headers => \%h, body => $body,
                 delay => $delay };
    };
}

1;
