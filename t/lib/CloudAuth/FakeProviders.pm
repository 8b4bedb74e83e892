package CloudAuth::FakeProviders;

# Fakes of the other token services, run by CloudAuth::FakeGoogle->serve
# (through $t->start_fake) and verifying what the module sends, answering
# like the real services, error shapes included:
#
#   zoom      Zoom's OAuth token endpoint (Server-to-Server OAuth): POST
#             /oauth/token, Basic auth client_id:client_secret, form
#             grant_type=account_credentials&account_id=... (the raw
#             body is recorded as "body"); errors
#             {"reason": "...", "error": "invalid_client"}
#   oauth2    a generic RFC 6749 token endpoint: POST /oauth2/token,
#             grant_type=client_credentials, the client by Basic auth
#             (form-encoded id and secret) or in the form, scope, audience;
#             errors {"error": "...", "error_description": "..."}
#   metadata  the GCE metadata server, plain HTTP: GET only, requires
#             "Metadata-Flavor: Google", refuses X-Forwarded-For;
#             .../service-accounts/default/token?scopes=a,b answers JSON,
#             .../service-accounts/default/identity?audience=URL the bare
#             JWT as text; errors in plain text
#   iam       IAM Credentials generateAccessToken: POST
#             /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken with
#             a Bearer token the fake Google token endpoint (or another fake
#             named in issuers =>, as the fake STS) issued and a JSON
#             body {"scope": [...], "lifetime": "3600s"}; answers
#             {"accessToken", "expireTime"}; errors {"error": {"code",
#             "message", "status"}}
#   zoomapi   an API taking Zoom JWTs: verifies the HS256 signature with
#             the API secret, the header and the claims (iss, exp only),
#             401 {"code": 124, "message": "Invalid access token."} if bad,
#             otherwise hands the request to the echo upstream
#
# Each fake NAME reads its behaviour from fake_NAME.json at every request
# (set(): status, error, reason, error_description, body, delay, drop,
# expires_in, retry_after) and appends one JSON line per request to
# fake_NAME.log (requests()): what was sent, "verified", "reason" when not,
# "token" when one was issued.

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use JSON::PP;
use MIME::Base64 qw(decode_base64 decode_base64url encode_base64url);
use POSIX ();
use Time::HiRes qw(time);

use CloudAuth::FakeGoogle;

my $json = JSON::PP->new->canonical->allow_nonref;

*random_hex = \&CloudAuth::FakeGoogle::random_hex;
*http_date = \&CloudAuth::FakeGoogle::http_date;

# test side ---------------------------------------------------------------

# set($t, NAME, %behaviour); set($t, NAME) restores the default
sub set {
    my ($t, $name, %b) = @_;
    CloudAuth::FakeGoogle::write_json($t->dir . "/fake_$name.json", \%b);
}

sub requests {
    my ($t, $name) = @_;
    return CloudAuth::FakeGoogle::read_json_lines($t->dir . "/fake_$name.log");
}

sub count { scalar(my @r = requests(@_)) }

sub tokens { map { $_->{token} // () } requests(@_) }

# the reasons of the requests that failed verification
sub unverified {
    my ($t, $name) = @_;
    return map { $_->{reason} // 'not verified' } grep { !$_->{verified} }
           requests($t, $name);
}

# start($t, NAME, %o): starts fake NAME (zoom, oauth2, metadata over plain
# HTTP; the others over TLS with the test's certificate)
sub start {
    my ($t, $name, %o) = @_;

    my %handler = (zoom => \&zoom_handler, oauth2 => \&oauth2_handler,
                   metadata => \&metadata_handler, iam => \&iam_handler,
                   zoomapi => \&zoomapi_handler);

    my $h = $handler{ $o{kind} // $name } or die "no fake \"$name\"\n";
    my %tls = $name eq 'metadata' || ($o{kind} // '') eq 'metadata' ? ()
            : (tls => { cert => $t->dir . '/server.crt',
                        key => $t->dir . '/server.key' });

    return $t->start_fake($name, %tls,
                          handler => $h->(%o, dir => $t->dir, name => $name));
}

# server side -------------------------------------------------------------

sub form {
    my ($body) = @_;
    my (%form, @dup);

    for my $pair (split /&/, $body // '') {
        my ($k, $v) = map { my $s = $_ // ''; $s =~ tr/+/ /;
                            $s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge; $s }
                      split /=/, $pair, 2;
        push @dup, $k if exists $form{$k};
        $form{$k} = $v;
    }

    return (\%form, \@dup);
}

sub unescape {
    my ($s) = @_;
    $s =~ tr/+/ /;
    $s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
    return $s;
}

sub query {
    my ($uri) = @_;
    my ($q) = $uri =~ /\?(.*)$/;
    return { map { my ($k, $v) = split /=/, $_, 2; (unescape($k),
                                                   unescape($v // '')) }
             split /&/, $q // '' };
}

# Basic credentials: (user, password) or ()
sub basic {
    my ($req) = @_;
    my ($b64) = ($req->{headers}{authorization} // '') =~ /^Basic\s+(\S+)$/i
        or return ();
    my ($u, $p) = decode_base64($b64) =~ /^([^:]*):(.*)$/s or return ();
    return ($u, $p);
}

# a handler around CHECK: CHECK($req, $b, \%rec) returns the failure as
# [status, body, content type, headers] or undef; OK($req, $b, \%rec)
# returns the success body (and sets $rec->{token})
sub handler {
    my (%o) = @_;

    return sub {
        my ($req, $conn) = @_;

        my $b = CloudAuth::FakeGoogle::read_json(
                    "$o{dir}/fake_$o{name}.json") || {};
        my %rec = (time => time, pid => $$, peer => $conn->{peer},
                   conn_request => $conn->{n}, method => $req->{method},
                   uri => $req->{uri}, path => $req->{path},
                   content_type => $req->{headers}{'content-type'},
                   headers => $req->{raw});

        my $err = $o{check}->($req, $b, \%rec);
        $rec{verified} = $err ? 0 : 1;
        $rec{reason} = $err->[4] // $err->[1] if $err;

        my $type = $o{type} // 'application/json';
        my %h = ('Content-Type' => $type,
                 'Cache-Control' => 'no-store',
                 Date => http_date(time));
        $h{'Retry-After'} = $b->{retry_after} if defined $b->{retry_after};

        my $res = { headers => \%h, delay => $b->{delay} };

        if ($b->{drop}) {
            $rec{status} = 'drop';
            $res = { drop => 1, delay => $b->{delay} };

        } elsif ($err) {
            $res->{status} = $rec{status} = $err->[0];
            $res->{body} = $err->[1];
            $h{'Content-Type'} = $err->[2] if $err->[2];
            %h = (%h, %{ $err->[3] || {} });

        } elsif (my $status = $b->{status} // ($b->{error} ? 400 : 0)) {
            $res->{status} = $rec{status} = $status;
            $res->{body} = $b->{body} // $o{error}->($b, $status);
            $h{'Content-Type'} = $b->{content_type} if $b->{content_type};

        } elsif (defined $b->{body}) {
            $res->{status} = $rec{status} = 200;
            $res->{body} = $b->{body};
            $rec{raw_body} = 1;

        } else {
            $res->{status} = $rec{status} = 200;
            $res->{body} = $o{ok}->($req, $b, \%rec);
        }

        CloudAuth::FakeGoogle::append_json("$o{dir}/fake_$o{name}.log",
                                           \%rec);
        return $res;
    };
}

sub serial { CloudAuth::FakeGoogle::serial($_[0]) }

# Zoom --------------------------------------------------------------------

# zoom_handler(dir, name, apps => {client_id => {secret, account_id}})
sub zoom_handler {
    my (%o) = @_;

    my $zerr = sub {
        my ($status, $error, $reason) = @_;
        return [$status, $json->encode({ reason => $reason,
                                         error => $error }),
                undef, undef, "$error: $reason"];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        return [404, '{"status":false,"errorCode":-1,"errorMessage":'
                     . '"Not Found"}', undef, undef, 'path']
            if $req->{path} ne '/oauth/token';
        return $zerr->(405, 'invalid_request', 'Method Not Allowed')
            if $req->{method} ne 'POST';

        my ($id, $secret) = basic($req);
        $rec->{client_id} = $id;
        my $app = defined $id ? $o{apps}{$id} : undef;

        return $zerr->(401, 'invalid_client',
                       'Invalid client_id or client_secret')
            if !$app || $secret ne $app->{secret};

        return $zerr->(400, 'invalid_request', 'Bad Request: Content-Type')
            if ($req->{headers}{'content-type'} // '')
               !~ m{^application/x-www-form-urlencoded\s*(;|$)}i;

        my ($f, $dup) = form($req->{body});
        $rec->{form} = $f;
        $rec->{body} = $req->{body};

        return $zerr->(400, 'invalid_request', "duplicate @$dup") if @$dup;
        return $zerr->(400, 'unsupported_grant_type',
                       'unsupported grant type')
            if ($f->{grant_type} // '') ne 'account_credentials';
        return $zerr->(400, 'invalid_request', 'client_secret in the body')
            if exists $f->{client_secret};

        my @extra = grep { !/^(grant_type|account_id)$/ } sort keys %$f;
        return $zerr->(400, 'invalid_request', "unexpected @extra")
            if @extra;
        return $zerr->(400, 'invalid_request', 'Invalid account_id')
            if ($f->{account_id} // '') ne $app->{account_id};

        return undef;
    };

    my $ok = sub {
        my ($req, $b, $rec) = @_;
        $rec->{token} = sprintf 'eyJzv.zoom-fake-%d-%s', serial($o{dir}),
                                random_hex(24);
        $rec->{expires_in} = $b->{expires_in} // 3599;
        return $json->encode({ access_token => $rec->{token},
                               token_type => 'bearer',
                               expires_in => $rec->{expires_in},
                               scope => 'meeting:read:admin user:read:admin',
                               api_url => 'https://api.zoom.us' });
    };

    my $error = sub {
        my ($b, $status) = @_;
        return $json->encode({
            reason => $b->{reason} // "injected failure $status",
            error => $b->{error} // ($status >= 500 ? 'server_error'
                                                     : 'invalid_request') });
    };

    return handler(%o, check => $check, ok => $ok, error => $error);
}

# generic OAuth2 ----------------------------------------------------------

# oauth2_handler(dir, name, clients => {client_id => {secret, auth
# (basic|body), scope, audience}})
sub oauth2_handler {
    my (%o) = @_;

    my $oerr = sub {
        my ($status, $error, $desc, $h) = @_;
        return [$status, $json->encode({ error => $error,
                                         error_description => $desc }),
                undef, $h, "$error: $desc"];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        return $oerr->(404, 'not_found', 'no such path')
            if $req->{path} ne '/oauth2/token';
        return $oerr->(405, 'invalid_request', 'POST only')
            if $req->{method} ne 'POST';
        return $oerr->(400, 'invalid_request', 'not a form')
            if ($req->{headers}{'content-type'} // '')
               !~ m{^application/x-www-form-urlencoded\s*(;|$)}i;

        my ($f, $dup) = form($req->{body});
        $rec->{form} = { %$f };
        delete $rec->{form}{client_secret};

        return $oerr->(400, 'invalid_request', "duplicate @$dup") if @$dup;

        my ($id, $secret) = basic($req);
        my $auth;

        if (defined $id) {
            return $oerr->(400, 'invalid_request',
                           'more than one client authentication method')
                if exists $f->{client_id} || exists $f->{client_secret};
            # RFC 6749 2.3.1: form-encoded, then Basic
            ($id, $secret) = (unescape($id), unescape($secret));
            $auth = 'basic';

        } elsif (exists $f->{client_id}) {
            ($id, $secret) = ($f->{client_id}, $f->{client_secret} // '');
            $auth = 'body';
        }

        $rec->{auth} = $auth;
        $rec->{client_id} = $id;

        my $c = defined $id ? $o{clients}{$id} : undef;

        return $oerr->(401, 'invalid_client', 'Client authentication failed',
                       { 'WWW-Authenticate' => 'Basic realm="oauth2"' })
            if !$c || $secret ne $c->{secret};
        return $oerr->(401, 'invalid_client',
                       "client authentication must use $c->{auth}")
            if $c->{auth} && $auth ne $c->{auth};
        return $oerr->(400, 'unsupported_grant_type',
                       'grant_type must be client_credentials')
            if ($f->{grant_type} // '') ne 'client_credentials';

        for my $p (qw(scope audience)) {
            next if ($f->{$p} // "\0") eq ($c->{$p} // "\0");
            return $oerr->(400, $p eq 'scope' ? 'invalid_scope'
                                              : 'invalid_request',
                           "$p is not \"" . ($c->{$p} // '(none)') . '"');
        }

        my @extra = grep { !/^(grant_type|scope|audience|client_id|
                                client_secret)$/x } sort keys %$f;
        return $oerr->(400, 'invalid_request', "unexpected @extra")
            if @extra;

        return undef;
    };

    my $ok = sub {
        my ($req, $b, $rec) = @_;
        $rec->{token} = sprintf 'oat-fake-%d-%s', serial($o{dir}),
                                random_hex(24);
        $rec->{expires_in} = $b->{expires_in} // 3600;
        my %a = (access_token => $rec->{token}, token_type => 'Bearer',
                 expires_in => $rec->{expires_in});
        $a{scope} = $rec->{form}{scope} if defined $rec->{form}{scope};
        return $json->encode(\%a);
    };

    my $error = sub {
        my ($b, $status) = @_;
        return $json->encode({
            error => $b->{error} // ($status >= 500 ? 'server_error'
                                                     : 'invalid_request'),
            error_description => $b->{error_description}
                                 // "injected failure $status" });
    };

    return handler(%o, check => $check, ok => $ok, error => $error);
}

# the metadata server -----------------------------------------------------

# metadata_handler(dir, name, email => SERVICE ACCOUNT)
sub metadata_handler {
    my (%o) = @_;

    my $base = '/computeMetadata/v1/instance/service-accounts/default/';
    my $email = $o{email} // 'vm-sa@cloudauth-test.iam.gserviceaccount.com';

    my $text = sub {
        my ($status, $body) = @_;
        return [$status, "$body\n", 'text/plain; charset=utf-8', undef,
                $body];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        $rec->{flavor} = $req->{headers}{'metadata-flavor'};
        $rec->{query} = query($req->{uri});

        return $text->(403, 'Missing required header "Metadata-Flavor": '
                            . 'Google')
            if ($req->{headers}{'metadata-flavor'} // '') ne 'Google';
        return $text->(403, 'Request had an X-Forwarded-For header')
            if exists $req->{headers}{'x-forwarded-for'};
        return $text->(405, 'Method Not Allowed')
            if $req->{method} ne 'GET';
        return $text->(400, 'GET with a body') if length $req->{body};

        if ($req->{path} eq "${base}token") {
            $rec->{what} = 'token';
            my @x = grep { $_ ne 'scopes' } keys %{ $rec->{query} };
            return $text->(400, "unexpected @x") if @x;
            return $text->(400, 'empty scopes')
                if exists $rec->{query}{scopes}
                   && !length $rec->{query}{scopes};
            return undef;
        }

        if ($req->{path} eq "${base}identity") {
            $rec->{what} = 'identity';
            return $text->(400, 'non-empty audience parameter required')
                unless length($rec->{query}{audience} // '');
            my @x = grep { !/^(audience|format|licenses)$/ }
                    keys %{ $rec->{query} };
            return $text->(400, "unexpected @x") if @x;
            return undef;
        }

        return $text->(404, 'Not Found');
    };

    my $ok = sub {
        my ($req, $b, $rec) = @_;

        my $life = $b->{expires_in} // 3599;
        $rec->{expires_in} = $life;

        if ($rec->{what} eq 'identity') {
            my $now = int time;
            $rec->{token} = CloudAuth::FakeGoogle::id_token(
                iss => 'https://accounts.google.com',
                aud => $rec->{query}{audience}, azp => $email,
                email => $email, email_verified => JSON::PP::true,
                iat => $now, exp => $now + $life,
                sub => '1' . serial($o{dir}) . random_hex(4));
            return $rec->{token};
        }

        # sticky => 1: as the real server, the token held is handed back,
        # with what it has left, until renew_before seconds before its end
        my $state = "$o{dir}/fake_$o{name}_sticky.json";
        my $held = $b->{sticky} && CloudAuth::FakeGoogle::read_json($state);

        if ($held && $held->{exp} - time > ($b->{renew_before} // 0)) {
            $rec->{token} = $held->{token};
            $rec->{expires_in} = $life = int($held->{exp} - time);
            $rec->{sticky} = 1;

        } else {
            $rec->{token} = sprintf 'ya29.meta-fake-%d-%s', serial($o{dir}),
                                    random_hex(16);
            CloudAuth::FakeGoogle::write_json($state,
                { token => $rec->{token}, exp => time + $life })
                if $b->{sticky};
        }

        return $json->encode({ access_token => $rec->{token},
                               expires_in => $life,
                               token_type => 'Bearer' });
    };

    my $error = sub {
        my ($b, $status) = @_;
        return ($b->{reason} // "injected failure $status") . "\n";
    };

    # the identity answer is text, as the real server's
    my $h = handler(%o, check => $check, ok => $ok, error => $error);

    return sub {
        my $res = $h->(@_);
        $res->{headers}{'Content-Type'} = 'text/html; charset=utf-8'
            if ($res->{status} // 0) == 200 && $_[0]{path} =~ /identity$/;
        $res->{headers}{'Metadata-Flavor'} = 'Google' if $res->{headers};
        return $res;
    };
}

# IAM Credentials ---------------------------------------------------------

# iam_handler(dir, name, targets => {email => "scope scope"}, issuers =>
# [fakes whose tokens authorise a call; default ["token"]])
sub iam_handler {
    my (%o) = @_;

    my $gerr = sub {
        my ($code, $status, $message) = @_;
        return [$code, $json->encode({ error => { code => $code,
                                                  message => $message,
                                                  status => $status } }),
                undef, undef, "$status: $message"];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        my ($email) = $req->{path}
            =~ m{^/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken$}
            or return $gerr->(404, 'NOT_FOUND', 'no such method');
        $rec->{target} = $email;

        return $gerr->(405, 'INVALID_ARGUMENT', 'POST only')
            if $req->{method} ne 'POST';

        my ($bearer) = ($req->{headers}{authorization} // '')
                       =~ /^Bearer (\S+)$/;
        $rec->{source_token} = $bearer;
        my %issued = map { ($_->{token} // '') => 1 }
            map { CloudAuth::FakeGoogle::read_json_lines(
                      "$o{dir}/fake_$_.log") } @{ $o{issuers} // ['token'] };

        return $gerr->(401, 'UNAUTHENTICATED', 'Request had invalid '
                       . 'authentication credentials. Expected OAuth 2 '
                       . 'access token')
            if !$bearer || !$issued{$bearer};
        return $gerr->(400, 'INVALID_ARGUMENT', 'not JSON')
            if ($req->{headers}{'content-type'} // '')
               !~ m{^application/json}i;

        my $body = eval { $json->decode($req->{body}) };
        $rec->{body} = $body;

        return $gerr->(400, 'INVALID_ARGUMENT', 'body is not '
                       . '{"scope": [...], "lifetime": "3600s"}')
            unless ref $body eq 'HASH' && ref $body->{scope} eq 'ARRAY'
                   && ($body->{lifetime} // '') =~ /^\d+s$/
                   && join(',', sort keys %$body) eq 'lifetime,scope';

        my $allowed = $o{targets}{$email}
            // return $gerr->(403, 'PERMISSION_DENIED', "Permission "
                   . "'iam.serviceAccounts.getAccessToken' denied on "
                   . "resource (or it may not exist).");

        return $gerr->(400, 'INVALID_ARGUMENT', 'scope is not "'
                       . $allowed . '"')
            if join(' ', @{ $body->{scope} }) ne $allowed;

        return undef;
    };

    my $ok = sub {
        my ($req, $b, $rec) = @_;
        my $life = $b->{expires_in} // 3600;
        $rec->{token} = sprintf 'ya29.imp-fake-%d-%s', serial($o{dir}),
                                random_hex(16);
        $rec->{expires_in} = $life;
        return $json->encode({ accessToken => $rec->{token},
            expireTime => POSIX::strftime('%Y-%m-%dT%H:%M:%SZ',
                                          gmtime(time + $life)) });
    };

    my $error = sub {
        my ($b, $status) = @_;
        return $json->encode({ error => {
            code => $status,
            message => $b->{error_description} // "injected failure $status",
            status => $b->{error} // 'INTERNAL' } });
    };

    return handler(%o, check => $check, ok => $ok, error => $error);
}

# an API taking Zoom JWTs -------------------------------------------------

# zoomapi_handler(dir, name, keys => {api_key => api_secret}, next =>
# HANDLER for verified requests)
sub zoomapi_handler {
    my (%o) = @_;

    my $next = $o{next} // CloudAuth::FakeGoogle::upstream_handler(
                                dir => $o{dir});

    my $bad = sub {
        return [401, '{"code":124,"message":"Invalid access token."}',
                undef, undef, $_[0]];
    };

    my $check = sub {
        my ($req, $b, $rec) = @_;

        my ($jwt) = ($req->{headers}{authorization} // '')
                    =~ /^Bearer ([A-Za-z0-9_.-]+)$/
            or return $bad->('no Bearer JWT');

        $rec->{token} = $jwt;
        my @p = split /\./, $jwt, -1;
        return $bad->('not three parts') if @p != 3;

        my $h = eval { $json->decode(decode_base64url($p[0])) };
        my $c = eval { $json->decode(decode_base64url($p[1])) };
        $rec->{header} = $h;
        $rec->{claims} = $c;

        return $bad->('header is not {"alg":"HS256","typ":"JWT"}')
            unless ref $h eq 'HASH' && join(',', sort keys %$h) eq 'alg,typ'
                   && $h->{alg} eq 'HS256' && $h->{typ} eq 'JWT';
        return $bad->('claims are not {iss, exp}')
            unless ref $c eq 'HASH' && join(',', sort keys %$c) eq 'exp,iss';
        return $bad->('exp is not an integer')
            unless decode_base64url($p[1]) =~ /"exp":\d+[,}]/;

        my $secret = $o{keys}{ $c->{iss} }
            // return $bad->('iss is not a known API key');

        return $bad->('signature does not verify with the API secret')
            if encode_base64url(hmac_sha256("$p[0].$p[1]", $secret))
               ne $p[2];
        return $bad->('expired') if $c->{exp} <= time;

        return undef;
    };

    return sub {
        my ($req, $conn) = @_;

        my $res = handler(%o, check => $check, ok => sub { '' },
                          error => sub { '' })->($req, $conn);

        return $res if ($res->{status} // 0) != 200;
        return $next->($req, $conn);
    };
}

1;
