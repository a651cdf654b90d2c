// sitewatch status page: shows every <time datetime="…Z"> in the reader's time zone. The server
// renders UTC (what readers without JavaScript see); the UTC time stays in the title, on hover.
(function () {
  "use strict";
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", timeZoneName: "short"
  });
  var times = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < times.length; i++) {
    var when = new Date(times[i].getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      times[i].textContent = format.format(when);
      times[i].className = "local";
    }
  }
})();
