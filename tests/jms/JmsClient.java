// A JMS client for the broker-pair lab test, driven line by line on stdin
// so that one warm JVM serves a whole role (JVM start-up would otherwise
// dominate the failover figures). Every answer carries System.nanoTime(),
// which is CLOCK_MONOTONIC on Linux, the clock the test reads too.
//
//   connect            -> "connected NS"     (failover: transport, given as argument)
//   send N + N lines   -> "sent N NS"        (persistent text messages, one body a line)
//   consume N MS       -> "received NS BODY" per message, then "consumed N NS";
//                         "extra BODY" for anything after the N-th (duplicates)
//   quit
// Transport events: "interrupted NS", "resumed NS" (the listener method is
// spelt transportInterupted in ActiveMQ). Failures: "error WHAT".
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;

import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;
import javax.jms.TextMessage;

import org.apache.activemq.ActiveMQConnection;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.transport.TransportListener;

public final class JmsClient {
    private static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String queueName = args[1];
        // Loads the client's classes before the test starts timing anything.
        ActiveMQConnectionFactory factory = new ActiveMQConnectionFactory(url);
        ActiveMQConnection connection = null;
        Session session = null;
        Queue queue = null;
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        say("ready " + System.nanoTime());
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            try {
                switch (w[0]) {
                    case "connect":
                        connection = (ActiveMQConnection) factory.createConnection();
                        connection.addTransportListener(new TransportListener() {
                            public void onCommand(Object command) {}

                            public void onException(IOException error) {
                                say("error transport " + error);
                            }

                            public void transportInterupted() {
                                say("interrupted " + System.nanoTime());
                            }

                            public void transportResumed() {
                                say("resumed " + System.nanoTime());
                            }
                        });
                        connection.start();
                        session = connection.createSession(false, Session.AUTO_ACKNOWLEDGE);
                        queue = session.createQueue(queueName);
                        say("connected " + System.nanoTime());
                        break;
                    case "send": {
                        int n = Integer.parseInt(w[1]);
                        MessageProducer producer = session.createProducer(queue);
                        producer.setDeliveryMode(DeliveryMode.PERSISTENT);
                        for (int i = 0; i < n; i++) {
                            String body = in.readLine();
                            if (body == null) {
                                throw new IOException("stdin closed after " + i + " of " + n + " bodies");
                            }
                            producer.send(session.createTextMessage(body));
                        }
                        producer.close();
                        say("sent " + n + " " + System.nanoTime());
                        break;
                    }
                    case "consume": {
                        int n = Integer.parseInt(w[1]);
                        long wait = Long.parseLong(w[2]);
                        MessageConsumer consumer = session.createConsumer(queue);
                        int got = 0;
                        while (got < n) {
                            Message m = consumer.receive(wait);
                            if (m == null) {
                                break;
                            }
                            got++;
                            say("received " + System.nanoTime() + " " + ((TextMessage) m).getText());
                        }
                        say("consumed " + got + " " + System.nanoTime());
                        // A duplicate would come right after; a short look is enough.
                        Message extra;
                        while ((extra = consumer.receive(500)) != null) {
                            say("extra " + ((TextMessage) extra).getText());
                        }
                        consumer.close();
                        say("checked " + System.nanoTime());
                        break;
                    }
                    case "quit":
                        if (connection != null) {
                            connection.close();
                        }
                        return;
                    default:
                        say("error unknown command " + line);
                }
            } catch (Exception e) {
                say("error " + e.toString().replace('\n', ' '));
            }
        }
    }
}
